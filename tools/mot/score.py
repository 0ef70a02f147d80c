#!/usr/bin/env python3
"""Scores `aegis track` on public MOT pedestrian sequences with py-motmetrics.

Detections are made from each sequence's ground truth (tools/mot-data.sh fetches it): every
box is dropped with probability --miss, the others are jittered (centre by N(0, jitter·size),
width and height by a factor 1 + N(0, jitter)); with --false-alarms R, each frame also gets a
false alarm with probability R (a pedestrian-sized box anywhere in the picture). Seeded: the
same seeds give the same detections on every machine (Python's Mersenne Twister).

Compared, on the same detections:
  * aegis, live output   `aegis track --no-backfill`  (min_hits 3, what the pipeline shows)
  * aegis, back-filled   `aegis track`                (min_hits 3, tentative frames written)
  * aegis, min_hits 1    `aegis track --min-hits 1`   (no birth gate)
  * greedy IoU           the naive baseline below: each frame, pairs of (track's last box,
                         detection) taken in falling IoU order while IoU >= 0.3, every
                         detection reported, tracks dropped after 30 frames unmatched

Scoring is py-motmetrics' (CLEAR MOT and identity metrics, IoU >= 0.5 to match), summed over
the sequences of one seed ("OVERALL"), then averaged over the seeds.

  tools/mot/score.py --aegis target/debug/aegis [--data .tools/mot-data] [--seeds 10]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import motmetrics as mm

SEQUENCES = ["TUD-Campus", "TUD-Stadtmitte"]
METRICS = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses"]


def read_gt(path):
    """{frame: [(id, x, y, w, h)]} of the boxes to be found (confidence 1)."""
    frames = {}
    with open(path) as f:
        for line in f:
            v = line.strip().split(",")
            if len(v) < 7 or float(v[6]) < 1:
                continue
            frames.setdefault(int(v[0]), []).append(
                (int(v[1]), float(v[2]), float(v[3]), float(v[4]), float(v[5]))
            )
    return frames


def make_detections(gt, seed, miss, jitter, false_alarms):
    """MOTChallenge det.txt lines from ground truth, with misses, jitter and false alarms."""
    rng = random.Random(seed)
    boxes = [b for bs in gt.values() for b in bs]
    right = max(x + w for _, x, _, w, _ in boxes)
    bottom = max(y + h for _, _, y, _, h in boxes)
    lines = []
    for frame in range(1, max(gt) + 1):
        for _, x, y, w, h in gt.get(frame, []):
            if rng.random() < miss:
                continue
            cx = x + w / 2 + rng.gauss(0, jitter * w)
            cy = y + h / 2 + rng.gauss(0, jitter * h)
            w2 = w * max(0.2, 1 + rng.gauss(0, jitter))
            h2 = h * max(0.2, 1 + rng.gauss(0, jitter))
            lines.append(f"{frame},-1,{cx - w2 / 2:.2f},{cy - h2 / 2:.2f},{w2:.2f},{h2:.2f},0.9")
        if false_alarms > 0 and rng.random() < false_alarms:
            _, _, _, w, h = rng.choice(boxes)
            x, y = rng.uniform(0, right - w), rng.uniform(0, bottom - h)
            lines.append(f"{frame},-1,{x:.2f},{y:.2f},{w:.2f},{h:.2f},0.9")
    return "\n".join(lines) + "\n"


def iou(a, b):
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def greedy_iou(det_text, iou_threshold=0.3, max_age=30):
    """The naive baseline: greedy IoU association against each track's last box."""
    dets = {}
    for line in det_text.splitlines():
        v = line.split(",")
        dets.setdefault(int(v[0]), []).append(tuple(float(x) for x in v[2:6]))
    tracks = {}  # id -> (last box, last frame)
    next_id, out = 1, []
    for frame in range(1, max(dets) + 1):
        tracks = {i: t for i, t in tracks.items() if frame - t[1] <= max_age}
        ds = dets.get(frame, [])
        pairs = sorted(
            ((iou(t[0], d), i, j) for i, t in tracks.items() for j, d in enumerate(ds)),
            reverse=True,
        )
        used_t, used_d = set(), set()
        for score, i, j in pairs:
            if score < iou_threshold:
                break
            if i in used_t or j in used_d:
                continue
            used_t.add(i)
            used_d.add(j)
            tracks[i] = (ds[j], frame)
            out.append((frame, i, ds[j]))
        for j, d in enumerate(ds):
            if j not in used_d:
                tracks[next_id] = (d, frame)
                out.append((frame, next_id, d))
                next_id += 1
    out.sort(key=lambda r: (r[0], r[1]))
    return "".join(
        f"{f},{i},{b[0]:.2f},{b[1]:.2f},{b[2]:.2f},{b[3]:.2f},1,-1,-1,-1\n" for f, i, b in out
    )


def run_aegis(aegis, det_path, res_path, extra):
    cmd = [aegis, "track", "--det", det_path, "--out", res_path, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"mot: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


GREEDY = "greedy IoU baseline"
VARIANTS = [
    ("aegis, live output (min_hits 3, --no-backfill)", ["--no-backfill"]),
    ("aegis, back-filled (min_hits 3, default)", []),
    ("aegis, min_hits 1", ["--min-hits", "1"]),
    (GREEDY, None),
]


def score(args, seed, false_alarms, work):
    """{variant: {metric: value}} over all sequences (motmetrics' OVERALL row)."""
    accs = {name: [] for name, _ in VARIANTS}
    for seq in SEQUENCES:
        gt_path = os.path.join(args.data, seq, "gt", "gt.txt")
        if not os.path.exists(gt_path):
            sys.exit(f"mot: {gt_path} is missing: run tools/mot-data.sh first")
        det = make_detections(read_gt(gt_path), seed, args.miss, args.jitter, false_alarms)
        det_path = os.path.join(work, f"{seq}-{seed}-det.txt")
        with open(det_path, "w") as f:
            f.write(det)
        gt = mm.io.loadtxt(gt_path, fmt="mot15-2D", min_confidence=1)
        for k, (name, extra) in enumerate(VARIANTS):
            res_path = os.path.join(work, f"{seq}-{seed}-{k}.txt")
            if extra is None:
                with open(res_path, "w") as f:
                    f.write(greedy_iou(det))
            else:
                run_aegis(args.aegis, det_path, res_path, extra)
            ts = mm.io.loadtxt(res_path, fmt="mot15-2D")
            accs[name].append(mm.utils.compare_to_groundtruth(gt, ts, "iou", distth=0.5))
    mh = mm.metrics.create()
    out = {}
    for name, acc in accs.items():
        s = mh.compute_many(acc, names=SEQUENCES, metrics=METRICS, generate_overall=True)
        out[name] = {m: float(s.loc["OVERALL", m]) for m in METRICS}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--aegis", required=True, help="the aegis binary")
    p.add_argument("--data", default=".tools/mot-data", help="tools/mot-data.sh's DIR")
    p.add_argument("--seeds", type=int, default=10, help="seeds 1..N, averaged")
    p.add_argument("--miss", type=float, default=0.15, help="probability a box is missed")
    p.add_argument("--jitter", type=float, default=0.05, help="box noise, relative to size")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not os.access(args.aegis, os.X_OK):
        sys.exit(f"mot: {args.aegis} is not an executable aegis binary")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for fa in (0.0, 0.3):
            per_seed = [score(args, seed, fa, work) for seed in range(1, args.seeds + 1)]
            setting = f"{args.miss:.0%} missed, jitter {args.jitter}, false alarms {fa}/frame"
            results[setting] = {
                name: {
                    **{m: sum(s[name][m] for s in per_seed) / len(per_seed) for m in METRICS},
                    "mota_min": min(s[name]["mota"] for s in per_seed),
                    "mota_max": max(s[name]["mota"] for s in per_seed),
                    "mota_wins_vs_greedy": sum(
                        s[name]["mota"] > s[GREEDY]["mota"] for s in per_seed
                    ),
                }
                for name, _ in VARIANTS
            }
    print(
        f"Sequences: {', '.join(SEQUENCES)} (motmetrics 1.4.0 wheel), seeds 1-{args.seeds},"
        " means over seeds of the OVERALL row"
    )
    for setting, rows in results.items():
        print(f"\n{setting}\n")
        print("| tracker | MOTA % (min–max) | IDF1 % | ID switches | FP | FN | MOTA > greedy |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            wins = "—" if name == GREEDY else f"{r['mota_wins_vs_greedy']}/{args.seeds}"
            print(
                f"| {name} | {100 * r['mota']:.1f} ({100 * r['mota_min']:.1f}–"
                f"{100 * r['mota_max']:.1f}) | {100 * r['idf1']:.1f} | {r['num_switches']:.1f} |"
                f" {r['num_false_positives']:.1f} | {r['num_misses']:.1f} |"
                f" {wins} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
