//! The tracker on scenes with known ground truth: the synthetic clips' boxes, with detector
//! noise, misses, false alarms and low-confidence stretches.

use super::*;

struct Rng(aegis_hal::rng::XorShift);
impl Rng {
    fn f(&mut self) -> f64 {
        self.0.next_f64()
    }
}

/// Ground truth: `n` boxes moving with constant velocity, bouncing in a 1280×720 frame.
fn truth(frames: usize, n: usize, seed: u64) -> Vec<Vec<(u64, BoxXywh)>> {
    let mut rng = Rng(aegis_hal::rng::XorShift(seed));
    let mut objs: Vec<(BoxXywh, f64, f64)> = (0..n)
        .map(|_| {
            let w = 40.0 + 60.0 * rng.f();
            let h = w * (1.0 + 1.5 * rng.f());
            (
                BoxXywh {
                    x: rng.f() * (1280.0 - w),
                    y: rng.f() * (720.0 - h),
                    w,
                    h,
                },
                (rng.f() - 0.5) * 12.0,
                (rng.f() - 0.5) * 8.0,
            )
        })
        .collect();
    (0..frames)
        .map(|_| {
            objs.iter_mut()
                .enumerate()
                .map(|(i, (b, vx, vy))| {
                    let out = (i as u64 + 1, *b);
                    b.x += *vx;
                    b.y += *vy;
                    if b.x < 0.0 || b.x + b.w > 1280.0 {
                        *vx = -*vx;
                    }
                    if b.y < 0.0 || b.y + b.h > 720.0 {
                        *vy = -*vy;
                    }
                    out
                })
                .collect()
        })
        .collect()
}

/// Coverage (matched ground-truth boxes / all) and identity switches, matching each ground
/// truth box to the reported track with the highest IoU ≥ 0.5.
fn score(gt: &[Vec<(u64, BoxXywh)>], out: &[Vec<Track>]) -> (f64, usize) {
    let mut last_id: std::collections::HashMap<u64, u64> = Default::default();
    let (mut matched, mut total, mut switches) = (0, 0, 0);
    for (g, o) in gt.iter().zip(out) {
        for (gid, gb) in g {
            total += 1;
            let best = o
                .iter()
                .map(|t| (t.bbox.iou(gb), t.id))
                .filter(|(iou, _)| *iou >= 0.5)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((_, tid)) = best {
                matched += 1;
                if let Some(prev) = last_id.insert(*gid, tid)
                    && prev != tid
                {
                    switches += 1;
                }
            }
        }
    }
    (matched as f64 / total as f64, switches)
}

#[test]
fn clean_detections_give_one_stable_id_per_object() {
    let gt = truth(300, 5, 7);
    let mut tr = Tracker::new(TrackerConfig::default());
    let out: Vec<Vec<Track>> = gt
        .iter()
        .map(|g| {
            let dets: Vec<Detection> = g
                .iter()
                .map(|(_, b)| Detection {
                    bbox: *b,
                    score: 0.9,
                    class: 0,
                })
                .collect();
            tr.update(&dets)
        })
        .collect();
    let (coverage, switches) = score(&gt, &out);
    assert!(coverage > 0.99, "coverage {coverage}");
    assert_eq!(switches, 0);
    let ids: std::collections::HashSet<u64> = out.iter().flatten().map(|t| t.id).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
}

#[test]
fn noise_misses_false_alarms_and_weak_scores_are_survived() {
    let gt = truth(400, 6, 99);
    let mut rng = Rng(aegis_hal::rng::XorShift(12345));
    let mut tr = Tracker::new(TrackerConfig::default());
    let mut out = Vec::new();
    for (f, g) in gt.iter().enumerate() {
        let mut dets = Vec::new();
        for (id, b) in g {
            // 10 % missed detections.
            if rng.f() < 0.10 {
                continue;
            }
            let j = |r: &mut Rng, s: f64| (r.f() - 0.5) * 2.0 * s;
            // Object 1 is "occluded" half the time: weak scores that alone start no track.
            let score = if *id == 1 && (f / 50) % 2 == 1 {
                0.3
            } else {
                0.9
            };
            dets.push(Detection {
                bbox: BoxXywh {
                    x: b.x + j(&mut rng, 3.0),
                    y: b.y + j(&mut rng, 3.0),
                    w: b.w * (1.0 + j(&mut rng, 0.04)),
                    h: b.h * (1.0 + j(&mut rng, 0.04)),
                },
                score,
                class: 0,
            });
        }
        // One false alarm somewhere random every other frame.
        if f % 2 == 0 {
            dets.push(Detection {
                bbox: BoxXywh {
                    x: rng.f() * 1200.0,
                    y: rng.f() * 650.0,
                    w: 50.0,
                    h: 60.0,
                },
                score: 0.6,
                class: 0,
            });
        }
        out.push(tr.update(&dets));
    }
    let (coverage, switches) = score(&gt, &out);
    eprintln!("noisy detections: coverage {coverage:.3}, {switches} identity switches");
    assert!(coverage > 0.85, "coverage {coverage}");
    assert!(switches <= 3, "{switches} identity switches");
    // False alarms never last min_hits frames in one place: none becomes a reported track.
    let reported: std::collections::HashSet<u64> = out.iter().flatten().map(|t| t.id).collect();
    assert!(
        reported.len() <= 6 + 3,
        "{} ids reported for 6 objects",
        reported.len()
    );
}

#[test]
fn tracks_end_after_max_age_and_ids_are_never_reused() {
    let cfg = TrackerConfig {
        max_age: 5,
        min_hits: 1,
        ..Default::default()
    };
    let mut tr = Tracker::new(cfg);
    let b = BoxXywh {
        x: 100.0,
        y: 100.0,
        w: 50.0,
        h: 100.0,
    };
    let det = [Detection {
        bbox: b,
        score: 0.9,
        class: 0,
    }];
    assert_eq!(tr.update(&det)[0].id, 1);
    for _ in 0..10 {
        assert!(tr.update(&[]).is_empty());
    }
    // The object comes back after the track died: a new id.
    assert_eq!(tr.update(&det)[0].id, 2);
    // Different classes never match each other.
    let other = [Detection {
        bbox: b,
        score: 0.9,
        class: 7,
    }];
    let t = tr.update(&other);
    assert_eq!((t[0].id, t[0].class), (3, 7));
}

/// An object that shows up after the first `min_hits` frames of the sequence and walks
/// right: detections at frames `from..=to` (1-based), `dx` pixels a frame.
fn walker(from: u64, to: u64, dx: f64) -> std::collections::BTreeMap<u64, Vec<Detection>> {
    (from..=to)
        .map(|f| {
            let d = Detection {
                bbox: BoxXywh {
                    x: 100.0 + dx * (f - from) as f64,
                    y: 50.0,
                    w: 40.0,
                    h: 90.0,
                },
                score: 0.9,
                class: 0,
            };
            (f, vec![d])
        })
        .collect()
}

/// `(frame, id, left, top, width, height)` of each row of a MOT result file.
fn rows(res: &str) -> Vec<(u64, u64, [String; 4])> {
    res.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                [f[2], f[3], f[4], f[5]].map(String::from),
            )
        })
        .collect()
}

#[test]
fn offline_output_backfills_the_frames_a_track_was_tentative() {
    let dets = walker(10, 20, 4.0);
    let cfg = TrackerConfig::default();
    assert_eq!(cfg.min_hits, 3);
    let res = mot::track_file(&mut Tracker::new(cfg), &dets, true);
    // The same detections with min_hits 1: the tracker's filter and association do not
    // depend on min_hits, so this reports every frame with the boxes the tentative frames had.
    let every = mot::track_file(
        &mut Tracker::new(TrackerConfig { min_hits: 1, ..cfg }),
        &dets,
        false,
    );
    let (got, want) = (rows(&res), rows(&every));
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        (10..=20).collect::<Vec<_>>(),
        "one row per frame from the first detection, in frame order:\n{res}"
    );
    assert_eq!(got, want, "same ids and boxes as reporting every frame");
    // The first tentative frame is the detection itself (a new filter starts on it).
    assert_eq!(
        got[0].2,
        ["100.00", "50.00", "40.00", "90.00"].map(String::from)
    );
}

#[test]
fn backfill_is_handed_out_once_in_the_confirming_frame_and_never_live() {
    let dets = walker(10, 14, 4.0);
    let mut tr = Tracker::new(TrackerConfig::default());
    let mut every = Tracker::new(TrackerConfig {
        min_hits: 1,
        ..Default::default()
    });
    let mut reference = Vec::new();
    for f in 1..=14 {
        let d = dets.get(&f).map(Vec::as_slice).unwrap_or(&[]);
        let live = tr.update(d);
        reference.push(every.update(d));
        match f {
            ..=11 => {
                assert!(live.is_empty(), "frame {f}: tentative, not live");
                assert!(tr.backfill().is_empty(), "frame {f}");
            }
            12 => {
                assert_eq!(live, reference[11], "confirmed in its third frame");
                let want: Vec<PastTrack> = [10, 11]
                    .map(|frame| PastTrack {
                        frame,
                        track: reference[frame as usize - 1][0],
                    })
                    .to_vec();
                assert_eq!(tr.backfill(), want.as_slice());
            }
            _ => {
                assert_eq!(live, reference[f as usize - 1]);
                assert!(tr.backfill().is_empty(), "frame {f}: handed out once only");
            }
        }
    }
    assert_eq!(tr.frame(), 14);
}

#[test]
fn backfill_never_reports_tracks_that_never_confirm_and_stays_bounded() {
    let cfg = TrackerConfig {
        max_age: 1000,
        ..Default::default()
    };
    let mut tr = Tracker::new(cfg);
    let at = |x: f64| Detection {
        bbox: BoxXywh {
            x,
            y: 300.0,
            w: 50.0,
            h: 100.0,
        },
        score: 0.9,
        class: 0,
    };
    let mut out = Vec::new();
    for f in 1..=300u64 {
        let mut d = Vec::new();
        // A flickering object: matched two frames, missed one, forever; a streak never
        // reaches min_hits (3), so it never confirms, however long it lives.
        if f % 3 != 0 {
            d.push(at(100.0));
        }
        // One-frame false alarms, each somewhere new.
        if f % 7 == 0 {
            d.push(at(400.0 + (f % 5) as f64 * 120.0));
        }
        // Two-frame ones (one short of min_hits).
        if f % 11 == 0 || f % 11 == 1 {
            d.push(at(1100.0));
        }
        out.push(tr.update(&d));
        assert!(tr.backfill().is_empty(), "frame {f}: {:?}", tr.backfill());
        for t in &tr.tracks {
            assert!(t.tentative.len() <= cfg.min_hits as usize, "frame {f}");
        }
    }
    // Only the first min_hits frames (the start of the sequence) report tentative tracks.
    assert!(out[3..].iter().all(Vec::is_empty), "{out:?}");
    assert!(
        tr.tracks
            .iter()
            .any(|t| !t.confirmed && t.since_update <= 1),
        "the flickering track is still alive"
    );

    // The same through the offline writer: no row after the first min_hits frames.
    let mut text = String::new();
    for f in 1..=60u64 {
        if f % 3 != 0 {
            text.push_str(&format!("{f},-1,100,300,50,100,0.9\n"));
        }
        if f % 7 == 0 {
            text.push_str(&format!("{f},-1,600,300,50,100,0.9\n"));
        }
    }
    let res = mot::track_file(
        &mut Tracker::new(cfg),
        &mot::parse_detections(&text).unwrap(),
        true,
    );
    assert!(rows(&res).iter().all(|r| r.0 <= 3), "{res}");
}

#[test]
fn backfill_keeps_the_last_min_hits_tentative_frames() {
    // Matched at 10, 11, 13, 14, 16, 17, 18 (missed 12 and 15): confirmed at 18, the
    // third match in a row; of its six hidden frames the last three are kept.
    let mut dets = walker(10, 18, 2.0);
    dets.remove(&12);
    dets.remove(&15);
    let cfg = TrackerConfig::default();
    let res = mot::track_file(&mut Tracker::new(cfg), &dets, true);
    let every = mot::track_file(
        &mut Tracker::new(TrackerConfig { min_hits: 1, ..cfg }),
        &dets,
        false,
    );
    let want: Vec<_> = rows(&every)
        .into_iter()
        .filter(|r| [14, 16, 17, 18].contains(&r.0))
        .collect();
    assert_eq!(rows(&res), want, "{res}");
}

#[test]
fn backfilled_rows_on_noisy_detections_are_rows_of_tracks_that_were_confirmed() {
    let gt = truth(400, 6, 99);
    let mut rng = Rng(aegis_hal::rng::XorShift(777));
    let mut text = String::new();
    for (f, g) in gt.iter().enumerate() {
        for (_, b) in g {
            if rng.f() < 0.15 {
                continue;
            }
            let j = |r: &mut Rng, s: f64| (r.f() - 0.5) * 2.0 * s;
            text.push_str(&format!(
                "{},-1,{},{},{},{},0.9\n",
                f + 1,
                b.x + j(&mut rng, 4.0),
                b.y + j(&mut rng, 4.0),
                b.w,
                b.h
            ));
        }
        if f % 3 == 0 {
            text.push_str(&format!(
                "{},-1,{},{},50,60,0.7\n",
                f + 1,
                rng.f() * 1200.0,
                rng.f() * 650.0
            ));
        }
    }
    let dets = mot::parse_detections(&text).unwrap();
    let cfg = TrackerConfig::default();
    let live = rows(&mot::track_file(&mut Tracker::new(cfg), &dets, false));
    let filled = rows(&mot::track_file(&mut Tracker::new(cfg), &dets, true));
    let every = rows(&mot::track_file(
        &mut Tracker::new(TrackerConfig { min_hits: 1, ..cfg }),
        &dets,
        false,
    ));
    let confirmed: std::collections::HashSet<u64> = live.iter().map(|r| r.1).collect();
    let every: std::collections::HashSet<_> = every.into_iter().collect();
    let added: Vec<_> = filled.iter().filter(|r| !live.contains(r)).collect();
    assert!(
        !added.is_empty(),
        "misses make tracks restart: some rows are back-filled"
    );
    assert_eq!(filled.len(), live.len() + added.len(), "live rows all kept");
    let mut per_track: std::collections::HashMap<u64, u32> = Default::default();
    for r in &added {
        assert!(
            confirmed.contains(&r.1),
            "back-filled {r:?} of an unconfirmed track"
        );
        assert!(
            every.contains(*r),
            "{r:?}: a frame the track was matched in, its box then"
        );
        *per_track.entry(r.1).or_default() += 1;
    }
    assert!(
        per_track.values().all(|&n| n <= cfg.min_hits),
        "{per_track:?}"
    );
    let order = filled.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "frame order, one row per track and frame"
    );
}
