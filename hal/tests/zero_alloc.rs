//! Steady-state allocation check of a whole pipeline, and source backpressure.
//!
//! This binary installs a counting global allocator. What it measures is the *Rust* side of
//! the HAL: every allocation made through Rust's global allocator (by the HAL, ffmpeg-next,
//! std, ...) on the pipeline thread. libav*'s own C `malloc`s (packet buffers, x264's
//! internals, the muxer's fragment buffers) do not go through it and are NOT counted here.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aegis_hal::record::{DiskBudget, RecorderSettings, SegmentRecorder};
use aegis_hal::source::FileSource;
use aegis_hal::stage::{Passthrough, Stage, StageOutcome, TimestampOverlay};
use common::*;

struct Counting;

/// Print a backtrace of the first counted allocation (set from env `AEGIS_ALLOC_BACKTRACE`).
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Counting is on for this thread only (the test harness's own threads never count).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations counted on this thread (per thread, so tests running in parallel cannot
    /// add to each other's counts).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the thread-local may be gone while a thread exits.
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        let n = ALLOCS.with(|a| {
            let n = a.get();
            a.set(n + 1);
            n
        });
        if TRACE.load(Ordering::Relaxed) && n < 3 {
            // Capturing and printing allocate: switch counting off meanwhile (no recursion).
            COUNTING.with(|c| c.set(false));
            eprintln!(
                "allocation #{n} in the measured window:\n{}",
                std::backtrace::Backtrace::force_capture()
            );
            COUNTING.with(|c| c.set(true));
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is exactly System's; counting only touches an atomic flag and
// const-initialised thread-locals (neither allocates outside the opt-in trace path, which
// disables counting before it allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: as above; `ptr` came from this allocator, i.e. from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts Rust allocations made by `f` on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCS.with(|a| a.get());
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(|a| a.get()) - before)
}

#[test]
fn counting_allocator_counts() {
    // The instrument works: a Vec allocation inside the window is seen.
    let (v, n) = counted(|| std::hint::black_box(vec![1u8; 100]));
    drop(v);
    assert!(n >= 1, "the counting allocator saw nothing");
    let (_, n) = counted(|| std::hint::black_box(1 + 1));
    assert_eq!(n, 0);
}

#[test]
fn steady_state_pipeline_allocates_nothing() {
    TRACE.store(
        std::env::var_os("AEGIS_ALLOC_BACKTRACE").is_some(),
        Ordering::Relaxed,
    );
    let dir = tmpdir();
    let clip = dir.path().join("clip.mp4");
    write_clip(&clip, 320, 240, 100, &encoder(1500, 30));

    let mut settings = source_settings(&clip);
    settings.decoder_threads = 1;
    settings.pool_frames = 4;
    let mut src = FileSource::open(settings).expect("open clip");
    let mut stages: Vec<Box<dyn Stage>> = vec![
        Box::new(TimestampOverlay::new(8, 8, 2, true)),
        Box::new(Passthrough),
    ];
    let budget = DiskBudget::open(&dir.path().join("rec"), u64::MAX).unwrap();
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: dir.path().join("rec"),
            stream: aegis_hal::StreamId::new("file"),
            // Longer than the clip: no segment is opened or closed in the measured window.
            segment: Duration::from_secs(600),
            encoder: encoder(1500, 30),
        },
        budget,
    );

    let mut step = |src: &mut FileSource| -> u64 {
        let mut f = src
            .next_frame()
            .expect("decode")
            .expect("clip has enough frames");
        for s in stages.iter_mut() {
            assert_eq!(s.process(&mut f).expect("stage"), StageOutcome::Keep);
        }
        rec.push(&mut f).expect("record");
        f.seq
    };
    // Warm-up: opens the encoder and the first segment, fills libav's and the pool's state.
    for _ in 0..30 {
        step(&mut src);
    }
    let (seqs, allocs) = counted(|| {
        let mut last = 0;
        for _ in 0..60 {
            last = step(&mut src);
        }
        last
    });
    assert_eq!(seqs, 89, "measured the frames 30..90");
    assert_eq!(rec.stats().frames, 90);
    assert_eq!(rec.stats().segments, 0, "no segment closed in the window");
    assert!(rec.stats().bytes > 0, "the recorder really wrote packets");
    assert_eq!(
        allocs, 0,
        "{allocs} Rust allocations in 60 steady-state frames \
         (rerun with AEGIS_ALLOC_BACKTRACE=1 for where)"
    );
    // The recording is sound.
    rec.finish().unwrap();
    let segs = list_with_suffix(&dir.path().join("rec").join("file"), ".mp4");
    assert_eq!(segs.len(), 1);
    assert_eq!(decode_all(&segs[0]).pts_us.len(), 90);
}

#[test]
fn full_pool_blocks_the_source() {
    let dir = tmpdir();
    let clip = dir.path().join("clip.mp4");
    write_clip(&clip, 320, 240, 10, &encoder(1000, 30));
    let mut settings = source_settings(&clip);
    settings.pool_frames = 3;
    let mut src = FileSource::open(settings).expect("open");
    let pool = src.pool().clone();
    assert_eq!(pool.capacity(), 3);
    let held: Vec<_> = (0..3).map(|_| src.next_frame().unwrap().unwrap()).collect();
    assert_eq!(pool.available(), 0);

    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let f = src.next_frame();
        let _ = tx.send(());
        f.map(|f| f.map(|f| (f.seq, f.pts_us)))
    });
    // The source is blocked in the pool (not merely slow): wait until the pool says so.
    while pool.waiting() == 0 {
        assert!(
            rx.try_recv().is_err(),
            "next_frame returned while every surface was held"
        );
        std::thread::yield_now();
    }
    assert!(
        rx.try_recv().is_err(),
        "next_frame returned while every surface was held"
    );
    assert!(!worker.is_finished());

    let mut held = held;
    let first = held.remove(0);
    assert_eq!(first.seq, 0);
    drop(first);
    let got = worker
        .join()
        .expect("worker")
        .expect("next_frame")
        .expect("a frame");
    assert_eq!(got.0, 3, "the blocked call returns the next frame");
    assert!((got.1 - 3 * 33_333).abs() <= 50, "{got:?}");
    assert_eq!(pool.backpressure().0, 1, "one acquisition waited");
    drop(held);
    assert_eq!(pool.available(), 3, "every surface came back");
}
