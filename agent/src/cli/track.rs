//! `aegis track`: the tracker on MOTChallenge detections (det.txt → res.txt).

use std::path::Path;

use anyhow::Context;

/// `aegis track`: `det` (MOTChallenge detections) through a fresh tracker into `out`; with
/// `backfill`, confirmed tracks' tentative frames are written too.
pub(super) fn track(
    det: &Path,
    out: &Path,
    cfg: aegis_models::track::TrackerConfig,
    backfill: bool,
) -> anyhow::Result<()> {
    use aegis_models::track::{Tracker, mot};
    let text =
        std::fs::read_to_string(det).with_context(|| format!("reading {}", det.display()))?;
    let dets = mot::parse_detections(&text).with_context(|| format!("{}", det.display()))?;
    let mut tracker = Tracker::new(cfg);
    let res = mot::track_file(&mut tracker, &dets, backfill);
    std::fs::write(out, &res).with_context(|| format!("writing {}", out.display()))?;
    let ids: std::collections::HashSet<&str> =
        res.lines().filter_map(|l| l.split(',').nth(1)).collect();
    println!(
        "{} frames, {} detections → {} track boxes, {} tracks; wrote {}",
        dets.keys().next_back().copied().unwrap_or(0),
        dets.values().map(Vec::len).sum::<usize>(),
        res.lines().count(),
        ids.len(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod track_tests {
    use super::track;
    use aegis_models::track::TrackerConfig;

    /// `aegis track` writes a track's rows from its first detection (after the first
    /// min_hits frames of the file, where everything is reported anyway), unless told not to.
    #[test]
    fn track_writes_the_backfilled_rows_in_frame_order() {
        let dir = tempfile::tempdir().unwrap();
        let (det, res) = (dir.path().join("det.txt"), dir.path().join("res.txt"));
        let rows: String = (5..=9)
            .map(|f| format!("{f},-1,{},20,30,60,0.9,-1,-1,-1\n", 10 + 3 * f))
            .collect();
        std::fs::write(&det, rows).unwrap();
        let frames = |backfill: bool| -> Vec<(u64, u64)> {
            track(&det, &res, TrackerConfig::default(), backfill).unwrap();
            std::fs::read_to_string(&res)
                .unwrap()
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f[0].parse().unwrap(), f[1].parse().unwrap())
                })
                .collect()
        };
        assert_eq!(frames(true), [(5, 1), (6, 1), (7, 1), (8, 1), (9, 1)]);
        assert_eq!(frames(false), [(7, 1), (8, 1), (9, 1)]);
        let first = std::fs::read_to_string(&res).unwrap();
        assert!(first.starts_with("7,1,"), "{first}");
        track(&det, &res, TrackerConfig::default(), true).unwrap();
        let filled = std::fs::read_to_string(&res).unwrap();
        assert!(
            filled.starts_with("5,1,25.00,20.00,30.00,60.00,0.900,-1,-1,-1\n"),
            "{filled}"
        );
    }
}
