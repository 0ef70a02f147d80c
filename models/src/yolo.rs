//! YOLOv8-style detector outputs: decoding and non-maximum suppression.
//!
//! A YOLOv8 ONNX export has one output `[1, 4 + C, N]`: for each of N anchors, the box centre
//! and size (in input-tensor pixels) in rows 0..4, then one score per class. NudeNet's 320n
//! (C = 18, N = 2100) and any detector a user supplies go through this same code. Decoding
//! writes into a caller-owned `Vec` so the per-frame path reuses its buffers.

use crate::geometry::{BoxXywh, Letterbox};

/// One detection, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detected {
    /// Box in frame pixels.
    pub bbox: BoxXywh,
    /// Class index.
    pub class: u32,
    /// Class score, 0 to 1.
    pub score: f32,
}

/// Why an output tensor cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("detector output has {len} values; expected [1, 4 + {classes}, N]")]
pub struct ShapeError {
    /// Values in the tensor.
    pub len: usize,
    /// Classes the model was configured with.
    pub classes: usize,
}

/// Decodes `output` (`[1, 4 + classes, N]`, row-major) into `out` (cleared first): every
/// anchor whose best class score reaches `min_score`, mapped back to frame pixels.
pub fn decode(
    output: &[f32],
    classes: usize,
    min_score: f32,
    letterbox: Letterbox,
    out: &mut Vec<Detected>,
) -> Result<(), ShapeError> {
    out.clear();
    let rows = 4 + classes;
    if classes == 0 || output.is_empty() || !output.len().is_multiple_of(rows) {
        return Err(ShapeError {
            len: output.len(),
            classes,
        });
    }
    let n = output.len() / rows;
    let at = |r: usize, a: usize| output[r * n + a];
    for a in 0..n {
        let (mut best, mut class) = (f32::MIN, 0);
        for c in 0..classes {
            let s = at(4 + c, a);
            if s > best {
                best = s;
                class = c;
            }
        }
        if best < min_score {
            continue;
        }
        let b = [at(0, a), at(1, a), at(2, a), at(3, a)];
        out.push(detected(b, class as u32, best, letterbox));
    }
    Ok(())
}

/// One anchor's box (`cx, cy, w, h` in input-tensor pixels) in frame pixels.
fn detected(b: [f32; 4], class: u32, score: f32, letterbox: Letterbox) -> Detected {
    let [cx, cy, w, h] = b.map(f64::from);
    let s = letterbox.scale;
    Detected {
        bbox: BoxXywh {
            x: (cx - w / 2.0 - letterbox.pad_x) / s,
            y: (cy - h / 2.0 - letterbox.pad_y) / s,
            w: w / s,
            h: h / s,
        },
        class,
        score,
    }
}

/// Floats per candidate in a list that the GPU made from a detector output
/// (`aegis_cuda::Gpu::yolo_candidates`): anchor index, cx, cy, w, h, class, score.
pub const CANDIDATE: usize = aegis_cuda::YOLO_CANDIDATE;

/// Why a candidate list cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CandidateError {
    /// More anchors qualified than the list holds: decode the whole tensor instead.
    #[error("{count} anchors qualified, the list holds {cap}")]
    Cut {
        /// Anchors that qualified.
        count: usize,
        /// Entries the list holds.
        cap: usize,
    },
    /// An entry that the kernel cannot have written.
    #[error("candidate {index} is malformed: {reason}")]
    Malformed {
        /// Entry index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes a candidate list (the count's bits, then [`CANDIDATE`] floats per entry) into
/// `out` (cleared first), exactly as [`decode`] decodes the tensor the list was made from:
/// same anchors, same order (by anchor), same arithmetic. The list says only which anchors
/// reached the kernel's `min_score`; `classes` bounds the class indices. The entries are
/// sorted in place (nothing is allocated).
pub fn decode_candidates(
    list: &mut [f32],
    classes: usize,
    letterbox: Letterbox,
    out: &mut Vec<Detected>,
) -> Result<(), CandidateError> {
    out.clear();
    let cap = list.len().saturating_sub(1) / CANDIDATE;
    let count = aegis_cuda::yolo_candidate_count(list).unwrap_or(0);
    if count > cap {
        return Err(CandidateError::Cut { count, cap });
    }
    let entries = &mut list[1..1 + count * CANDIDATE];
    for (k, e) in entries.chunks_exact(CANDIDATE).enumerate() {
        let bad = |reason: &str| CandidateError::Malformed {
            index: k,
            reason: reason.to_string(),
        };
        if !(e[0] >= 0.0 && e[0].fract() == 0.0) {
            return Err(bad("the anchor index is not a whole number"));
        }
        if !(e[5] >= 0.0 && e[5].fract() == 0.0 && (e[5] as usize) < classes) {
            return Err(bad("the class is not one of the model's"));
        }
    }
    // The kernel appends in whatever order its threads ran; the tensor's order is by anchor
    // (NMS keeps the first of equal scores, so the order matters). Insertion sort: the
    // lists are short and mostly in order.
    let anchor = |e: &[f32], k: usize| e[k * CANDIDATE];
    for i in 1..count {
        let mut j = i;
        while j > 0 && anchor(entries, j - 1) > anchor(entries, j) {
            let (a, b) = entries.split_at_mut(j * CANDIDATE);
            a[(j - 1) * CANDIDATE..].swap_with_slice(&mut b[..CANDIDATE]);
            j -= 1;
        }
    }
    for k in 1..count {
        if anchor(entries, k - 1) == anchor(entries, k) {
            return Err(CandidateError::Malformed {
                index: k,
                reason: "an anchor is listed twice".into(),
            });
        }
    }
    for e in entries.chunks_exact(CANDIDATE) {
        out.push(detected(
            [e[1], e[2], e[3], e[4]],
            e[5] as u32,
            e[6],
            letterbox,
        ));
    }
    Ok(())
}

/// Greedy non-maximum suppression in place: keeps the highest-scoring boxes, dropping any box
/// that overlaps a kept one by more than `iou` (only within its class unless `agnostic`).
/// The survivors are left sorted by score, highest first.
pub fn nms(dets: &mut Vec<Detected>, iou: f64, agnostic: bool) {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = 0;
    for i in 0..dets.len() {
        let d = dets[i];
        let suppressed = dets[..kept]
            .iter()
            .any(|k| (agnostic || k.class == d.class) && k.bbox.iou(&d.bbox) > iou);
        if !suppressed {
            dets[kept] = d;
            kept += 1;
        }
    }
    dets.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[1, 4 + classes, n]` tensor from (cx, cy, w, h, class, score) anchors.
    fn tensor(classes: usize, anchors: &[(f32, f32, f32, f32, usize, f32)]) -> Vec<f32> {
        let n = anchors.len();
        let mut t = vec![0.0; (4 + classes) * n];
        for (a, &(cx, cy, w, h, c, s)) in anchors.iter().enumerate() {
            t[a] = cx;
            t[n + a] = cy;
            t[2 * n + a] = w;
            t[3 * n + a] = h;
            t[(4 + c) * n + a] = s;
            // A weaker runner-up class must not win.
            t[(4 + (c + 1) % classes) * n + a] = s / 2.0;
        }
        t
    }

    #[test]
    fn decodes_boxes_back_into_frame_pixels() {
        // A 640x480 frame in a 320 input, padded right/bottom: scale 0.5.
        let lb = Letterbox::top_left(640, 480, 320);
        let t = tensor(
            3,
            &[
                (100.0, 50.0, 40.0, 20.0, 2, 0.9),
                (10.0, 10.0, 5.0, 5.0, 0, 0.1),
            ],
        );
        let mut out = Vec::new();
        decode(&t, 3, 0.2, lb, &mut out).unwrap();
        assert_eq!(out.len(), 1, "the 0.1 anchor is below min_score");
        assert_eq!(out[0].class, 2);
        assert_eq!(out[0].score, 0.9);
        assert_eq!(
            out[0].bbox,
            BoxXywh {
                x: 160.0,
                y: 80.0,
                w: 80.0,
                h: 40.0
            }
        );
        // Centred letterbox: a 640x320 frame in 320 → scale 0.5, 80 px of padding on top.
        let lb = Letterbox::centred(640, 320, 320);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.5, 0.0, 80.0));
        decode(
            &tensor(1, &[(160.0, 160.0, 20.0, 20.0, 0, 0.5)]),
            1,
            0.2,
            lb,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out[0].bbox,
            BoxXywh {
                x: 300.0,
                y: 140.0,
                w: 40.0,
                h: 40.0
            }
        );
    }

    /// The list `Gpu::yolo_candidates` makes from `t` with `cap` slots, entries in anchor
    /// order or (`rev`) reversed, as the kernel's threads may append them in any order.
    fn candidates(t: &[f32], classes: usize, min: f32, cap: usize, rev: bool) -> Vec<f32> {
        let n = t.len() / (4 + classes);
        let mut entries = Vec::new();
        for a in 0..n {
            let (mut best, mut class) = (f32::MIN, 0);
            for c in 0..classes {
                if t[(4 + c) * n + a] > best {
                    best = t[(4 + c) * n + a];
                    class = c;
                }
            }
            if best >= min {
                entries.push([
                    a as f32,
                    t[a],
                    t[n + a],
                    t[2 * n + a],
                    t[3 * n + a],
                    class as f32,
                    best,
                ]);
            }
        }
        if rev {
            entries.reverse();
        }
        let mut list = vec![0.0; 1 + cap * CANDIDATE];
        list[0] = f32::from_bits(entries.len() as u32);
        for (k, e) in entries.iter().take(cap).enumerate() {
            list[1 + k * CANDIDATE..1 + (k + 1) * CANDIDATE].copy_from_slice(e);
        }
        list
    }

    #[test]
    fn a_candidate_list_decodes_as_its_tensor_does() {
        let lb = Letterbox::top_left(640, 480, 320);
        // Equal scores on different anchors: NMS keeps the first, so the order must be the
        // tensor's whatever order the list came in.
        let t = tensor(
            3,
            &[
                (100.0, 50.0, 40.0, 20.0, 2, 0.9),
                (10.0, 10.0, 5.0, 5.0, 0, 0.1),
                (101.0, 51.0, 40.0, 20.0, 1, 0.9),
                (300.0, 200.0, 8.0, 9.0, 0, 0.3),
            ],
        );
        let mut want = Vec::new();
        decode(&t, 3, 0.2, lb, &mut want).unwrap();
        assert_eq!(want.len(), 3);
        for rev in [false, true] {
            let mut list = candidates(&t, 3, 0.2, 8, rev);
            let mut got = vec![want[0]];
            decode_candidates(&mut list, 3, lb, &mut got).unwrap();
            assert_eq!(got, want, "reversed: {rev}");
            let (mut a, mut b) = (got.clone(), want.clone());
            nms(&mut a, 0.45, true);
            nms(&mut b, 0.45, true);
            assert_eq!(a, b);
        }
        // No candidate: nothing, not an error.
        let mut got = vec![want[0]];
        decode_candidates(&mut candidates(&t, 3, 0.95, 8, false), 3, lb, &mut got).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn a_cut_or_malformed_candidate_list_is_refused() {
        let lb = Letterbox::top_left(640, 480, 320);
        let t = tensor(
            3,
            &[
                (100.0, 50.0, 40.0, 20.0, 2, 0.9),
                (200.0, 50.0, 40.0, 20.0, 1, 0.8),
            ],
        );
        let mut out = Vec::new();
        assert_eq!(
            decode_candidates(&mut candidates(&t, 3, 0.2, 1, false), 3, lb, &mut out),
            Err(CandidateError::Cut { count: 2, cap: 1 })
        );
        let good = candidates(&t, 3, 0.2, 4, false);
        let mut bad_class = good.clone();
        bad_class[1 + 5] = 3.0;
        let mut bad_anchor = good.clone();
        bad_anchor[1] = 0.5;
        let mut twice = good.clone();
        twice[1 + CANDIDATE] = twice[1];
        for (mut list, what) in [
            (bad_class, "class"),
            (bad_anchor, "whole number"),
            (twice, "twice"),
        ] {
            let e = decode_candidates(&mut list, 3, lb, &mut out).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        // A list too short to hold its count's entries is cut, not read past its end.
        assert!(matches!(
            decode_candidates(&mut [f32::from_bits(5)], 3, lb, &mut out),
            Err(CandidateError::Cut { count: 5, cap: 0 })
        ));
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let mut out = Vec::new();
        assert_eq!(
            decode(&[0.0; 21], 18, 0.2, Letterbox::top_left(1, 1, 1), &mut out),
            Err(ShapeError {
                len: 21,
                classes: 18
            })
        );
        assert!(decode(&[], 1, 0.2, Letterbox::top_left(1, 1, 1), &mut out).is_err());
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster() {
        let d = |x: f64, class: u32, score: f32| Detected {
            bbox: BoxXywh {
                x,
                y: 0.0,
                w: 10.0,
                h: 10.0,
            },
            class,
            score,
        };
        let mut v = vec![
            d(0.0, 0, 0.6),
            d(1.0, 0, 0.9),
            d(50.0, 0, 0.7),
            d(2.0, 1, 0.8),
        ];
        let mut agnostic = v.clone();
        nms(&mut v, 0.45, false);
        assert_eq!(v, vec![d(1.0, 0, 0.9), d(2.0, 1, 0.8), d(50.0, 0, 0.7)]);
        nms(&mut agnostic, 0.45, true);
        assert_eq!(agnostic, vec![d(1.0, 0, 0.9), d(50.0, 0, 0.7)]);
    }
}
