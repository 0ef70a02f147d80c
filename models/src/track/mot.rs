//! MOTChallenge text formats, so the tracker can be run on public benchmark detections and
//! scored with the usual tools.
//!
//! Detections (`det.txt`): `frame, id, left, top, width, height, conf[, x, y, z]`, id = -1.
//! Results (`res.txt`): `frame, id, left, top, width, height, conf, -1, -1, -1`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{BoxXywh, Detection, Track, Tracker};

/// A line of a MOT file that could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct MotError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// Reads detections grouped by frame (frames without detections are absent).
pub fn parse_detections(text: &str) -> Result<BTreeMap<u64, Vec<Detection>>, MotError> {
    let mut out: BTreeMap<u64, Vec<Detection>> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| MotError {
            line: i + 1,
            reason,
        };
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 7 {
            return Err(err(format!(
                "expected at least 7 comma-separated fields, got {}",
                f.len()
            )));
        }
        let num = |k: usize, name: &str| -> Result<f64, MotError> {
            f[k].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| err(format!("{name} is not a number: {:?}", f[k])))
        };
        let frame = num(0, "frame")?;
        if frame < 1.0 || frame.fract() != 0.0 {
            return Err(err(format!(
                "frame must be a whole number from 1, got {}",
                f[0]
            )));
        }
        let (w, h) = (num(4, "width")?, num(5, "height")?);
        if w <= 0.0 || h <= 0.0 {
            return Err(err(format!("box must have a positive size, got {w}x{h}")));
        }
        out.entry(frame as u64).or_default().push(Detection {
            bbox: BoxXywh {
                x: num(2, "left")?,
                y: num(3, "top")?,
                w,
                h,
            },
            score: num(6, "conf")?,
            class: 0,
        });
    }
    Ok(out)
}

/// Runs `tracker` over every frame from 1 to the last one with detections and writes the
/// results in MOTChallenge format, in frame order (then by track id).
///
/// With `backfill`, a track's rows start where the track did: the frames in which it was
/// matched but still hidden by the birth gate (`min_hits`) are written once it is
/// confirmed (see [`Tracker::backfill`]). Without it, the rows are what live output
/// reports.
pub fn track_file(
    tracker: &mut Tracker,
    detections: &BTreeMap<u64, Vec<Detection>>,
    backfill: bool,
) -> String {
    let last = detections.keys().next_back().copied().unwrap_or(0);
    // The tracker counts frames from its first update; this file's frame 1 is the next one.
    let base = tracker.frame();
    let mut rows: Vec<(u64, Track)> = Vec::new();
    for frame in 1..=last {
        let dets = detections.get(&frame).map(Vec::as_slice).unwrap_or(&[]);
        rows.extend(tracker.update(dets).into_iter().map(|t| (frame, t)));
        if backfill {
            rows.extend(
                tracker
                    .backfill()
                    .iter()
                    .filter(|p| p.frame > base)
                    .map(|p| (p.frame - base, p.track)),
            );
        }
    }
    // A track has one row per frame, so (frame, id) orders every row.
    rows.sort_by_key(|(frame, t)| (*frame, t.id));
    let mut out = String::new();
    for (frame, t) in &rows {
        write_track(&mut out, *frame, t);
    }
    out
}

fn write_track(out: &mut String, frame: u64, t: &Track) {
    let b = t.bbox;
    let _ = writeln!(
        out,
        "{frame},{},{:.2},{:.2},{:.2},{:.2},{:.3},-1,-1,-1",
        t.id, b.x, b.y, b.w, b.h, t.score
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mot17_detections_and_names_bad_lines() {
        let text = "1,-1,794.2,47.5,71.2,174.8,67.5,-1,-1,-1\n# comment\n\n1,-1,164.1,19.6,66.5,163.2,29.4\n3,-1,1,2,3,4,0.9,-1,-1,-1\n";
        let d = parse_detections(text).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[&1].len(), 2);
        assert_eq!(
            d[&1][0].bbox,
            BoxXywh {
                x: 794.2,
                y: 47.5,
                w: 71.2,
                h: 174.8
            }
        );
        assert_eq!(d[&3][0].score, 0.9);
        assert_eq!(
            parse_detections("1,-1,1,2,3\n").unwrap_err(),
            MotError {
                line: 1,
                reason: "expected at least 7 comma-separated fields, got 5".into()
            }
        );
        let e = parse_detections("1,-1,1,2,3,4,0.5\n2,-1,1,x,3,4,0.5\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("top"), "{e}");
        assert!(
            parse_detections("0,-1,1,2,3,4,1\n")
                .unwrap_err()
                .reason
                .contains("frame")
        );
        assert!(
            parse_detections("1,-1,1,2,0,4,1\n")
                .unwrap_err()
                .reason
                .contains("positive")
        );
    }

    #[test]
    fn writes_results_for_every_frame_in_order() {
        let det = "1,-1,10,10,20,40,0.9\n2,-1,12,10,20,40,0.9\n3,-1,14,10,20,40,0.9\n";
        let mut tracker = Tracker::new(Default::default());
        let res = track_file(&mut tracker, &parse_detections(det).unwrap(), true);
        let lines: Vec<&str> = res.lines().collect();
        assert_eq!(lines.len(), 3, "{res}");
        assert!(
            lines[0].starts_with("1,1,10.00,10.00,20.00,40.00,0.900"),
            "{res}"
        );
        assert!(
            lines.iter().all(|l| l.split(',').nth(1) == Some("1")),
            "one stable id: {res}"
        );
    }
}
