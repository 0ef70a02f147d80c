#!/usr/bin/env bash
# Before/after of a change: `aegis bench pipeline` and `aegis bench workflow`,
# two builds of the agent (BASE, NEW) interleaved in one script (machines are noisy), ROUNDS
# times each; prints the medians and new/base. Usage:
#   BASE=/path/to/old/aegis NEW=target/release/aegis tools/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
base=${BASE:?BASE=path of the baseline aegis binary}; new=${NEW:-target/release/aegis}
rounds=${ROUNDS:-3}; out=${OUT:-target/bench-compare}; mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for who in base new; do
    bin=$base; [ "$who" = new ] && bin=$new
    "$bin" bench pipeline --repeat 1 --json "$out/pipeline-$who-$r.json" >/dev/null 2>&1
    "$bin" bench workflow --runs 20 --json "$out/workflow-$who-$r.json" >/dev/null 2>&1
  done
done
python3 - "$out" "$rounds" <<'PY'
import json,sys,statistics as st
out,rounds=sys.argv[1],int(sys.argv[2])
def load(kind,who,r): return json.load(open(f"{out}/{kind}-{who}-{r}.json"))
for clip in (0,1):
    for key in ("pipeline_fps","overhead_ratio","pipeline_vs_ffmpeg","allocs_per_frame","copies_per_frame"):
        b=[load("pipeline","base",r)[clip][key] for r in range(1,rounds+1)]
        n=[load("pipeline","new",r)[clip][key] for r in range(1,rounds+1)]
        name=load("pipeline","base",1)[clip]["clip"]
        ratio = st.median(n)/st.median(b) if st.median(b) else float('nan')
        print(f"{name:28} {key:20} base {st.median(b):9.3f} {[round(x,3) for x in b]}  new {st.median(n):9.3f} {[round(x,3) for x in n]}  new/base {ratio:.3f}")
for key in ("round_trip_p50_ms","apply_p50_ms","ping_p50_ms","ratio_p50"):
    b=[load("workflow","base",r)[key] for r in range(1,rounds+1)]
    n=[load("workflow","new",r)[key] for r in range(1,rounds+1)]
    print(f"workflow {key:20} base {st.median(b):9.3f} {[round(x,2) for x in b]}  new {st.median(n):9.3f} {[round(x,2) for x in n]}  new/base {st.median(n)/st.median(b):.3f}")
PY
