//! The tracker on scenes with known ground truth: the synthetic clips' boxes, with detector
//! noise, misses, false alarms and low-confidence stretches.

use super::*;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Ground truth: `n` boxes moving with constant velocity, bouncing in a 1280×720 frame.
fn truth(frames: usize, n: usize, seed: u64) -> Vec<Vec<(u64, BoxXywh)>> {
    let mut rng = Rng(seed);
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
    let mut rng = Rng(12345);
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
