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
        let (cx, cy, w, h) = (
            at(0, a) as f64,
            at(1, a) as f64,
            at(2, a) as f64,
            at(3, a) as f64,
        );
        let s = letterbox.scale;
        out.push(Detected {
            bbox: BoxXywh {
                x: (cx - w / 2.0 - letterbox.pad_x) / s,
                y: (cy - h / 2.0 - letterbox.pad_y) / s,
                w: w / s,
                h: h / s,
            },
            class: class as u32,
            score: best,
        });
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
