#!/usr/bin/env bash
# GPU inference (issue 24) ON the GPU machine, in two device calls, because ONNX Runtime with
# the CUDA provider (.ort-gpu/ort-gpu.tar.xz, ~60 MB: tools/device/ort-gpu.sh) and the
# agent's bundle (.device-agent/bundle.tar.xz: `just device-bundle`) do not fit one call:
#
#   1. carry .ort-gpu:          tools/device-gpu-inference.sh unpack   (into $AEGIS_ORT_GPU_DIR)
#   2. carry .device-agent, at once (the machine stays warm ~30 s):  tools/device-gpu-inference.sh
#
# Step 2 (with MODE=serving: only the serving comparison, see below) runs, with the models on
# the CUDA provider bound to device memory:
#   - the equivalence test (models/tests/cuda_stages.rs::gpu_engine_matches_the_cpu_engine):
#     masks and detections against the CPU provider of the same library, transfers per frame;
#   - `aegis bench stages` at 1080p: per-stage p50/p99 and each model at 1, 2, 8 streams, for
#     (cpu backend, CPU provider), (cuda backend, CPU provider), (cuda backend, CUDA provider);
#   - `aegis bench backends --all-stages`: the demo's stages at 1, 4, 8 streams, cuda backend
#     with GPU models vs the cpu backend with CPU models, same process.
# Results go to $OUT (or .device-agent/out-gpu); the summary lists every check, exit 1 if one
# failed. BUNDLE names another bundle than .device-agent/bundle.tar.xz (a smaller one with
# only `aegis`, its libs, the models and the 1080p clip is enough for MODE=serving).
set -euo pipefail
cd "$(dirname "$0")/.."
ort="${AEGIS_ORT_GPU_DIR:-/tmp/ort-gpu}"
if [ "${1:-}" = unpack ]; then
  rm -rf "$ort" && mkdir -p "$ort"
  tar -C "$ort" -xJf .ort-gpu/ort-gpu.tar.xz
  ls -l "$ort"
  exit 0
fi
lib="$ort/libonnxruntime.so.1.31.1"
[ -f "$lib" ] || { echo "no $lib: run '$0 unpack' (carrying .ort-gpu) in the call just before"; exit 2; }
out="${OUT:-$PWD/.device-agent/out-gpu}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck source=tools/device/checks.sh
source tools/device/checks.sh
cfg="$PWD/tools/device/gpu-infer.yaml"
work=$(mktemp -d)
tar -C "$work" -xJf "${BUNDLE:-.device-agent/bundle.tar.xz}"
cd "$work"
ln -s "$ort" ort-gpu
# The CUDA provider's own needs (cuBLAS, cuDNN, cudart 13) from PyTorch's wheels there.
nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])')
export LD_LIBRARY_PATH="$PWD/lib:$ort:$nv/cu13/lib:$nv/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
sed 's/provider: cuda/provider: cpu/' "$cfg" > cuda-cpu-models.yaml
sed 's/provider: cuda/provider: cpu/; s/kind: cuda, fallback: null/kind: cpu/' "$cfg" > cpu.yaml
cp "$cfg" cuda-gpu-models.yaml

# A bench that stalls is stopped (and its threads' stacks dumped) rather than eating the call.
limit="${LIMIT_S:-240}"
stacks() {
  sleep $((limit - 10))
  for p in $(pgrep -f "aegis bench"); do
    echo "== stacks of $p"
    if command -v gdb >/dev/null; then
      gdb -p "$p" -batch -ex "thread apply all bt 12" 2>/dev/null | grep -E "^#|^Thread" | head -200
    else
      for t in /proc/"$p"/task/*; do echo "$t $(cat "$t/comm") $(cat "$t/wchan")"; done
    fi
  done > "$out/stacks-$1.txt" 2>&1
}
# MODE=serving: only the GPU path's ways of serving several streams, cuda backend only, into
# a discard sink, at 2 and 8 streams: one session with one request per call (the default),
# batching across streams (max_batch 8, 4 and 2, no window), 2 and 4 sessions per model,
# batching on 2 sessions, and CUDA graphs (inference.cuda_graph) on 1 and 2 sessions and
# with batches of 4.
# TESTS=1 first runs the GPU tests the bundle's cuda-stages-test has: the detector's
# candidate lists against the host decode, and the equivalence test without and with
# CUDA graphs.
# CPU=1 also runs the cpu backend (CPU models) in each, for the cuda/cpu ratio; CPU="a b"
# only in the variants named.
# `aegis bench backends` prints each model's calls, requests per call, engine time per
# call, slowest call and queueing.
equivalence() { # NAME [ENV=VALUE...]
  local name=$1
  shift
  check "$name" env "$@" AEGIS_ORT_GPU_LIBRARY="$PWD/ort-gpu/libonnxruntime.so.1.31.1" \
    AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test \
    gpu_engine_matches_the_cpu_engine --include-ignored --nocapture
}
if [ "${MODE:-}" = serving ]; then
  if [ -n "${TESTS:-}" ]; then
    check candidate-lists ./cuda-stages-test gpu_candidate_lists_decode_as_the_host_tensor_does \
      --include-ignored --nocapture
    equivalence equivalence
    equivalence equivalence-graph AEGIS_CUDA_GRAPH=1
    # Lent frames (a Jetson's NVMM surfaces will be), against the decoder's pooled ones;
    # needs the bundle's CPU ONNX Runtime (.models/libonnxruntime.so.1.32.0).
    check lent-frames env AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test \
      lent_device_frames_give_what_pooled_ones_give --include-ignored --nocapture
    for mode in relaxed strict; do
      flag=AEGIS_CAPTURE_MODE=relaxed
      [ $mode = relaxed ] || flag=AEGIS_CUDA_STRICT_CAPTURE=1
      check "captures-$mode" env "$flag" \
        AEGIS_ORT_GPU_LIBRARY="$PWD/ort-gpu/libonnxruntime.so.1.31.1" AEGIS_MODELS_DIR=.models \
        ./cuda-stages-test graph_captures_do_not_fail_other_threads --include-ignored --nocapture
    done
  fi
  variant() { # NAME SED-SCRIPT (applied to the config); VARIANTS="a b" runs only those
    [ -z "${VARIANTS:-}" ] || [[ " $VARIANTS " == *" $1 "* ]] || return 0
    sed -e 's/kind: record, dir: [^}]*/kind: discard/' -e "$2" "$cfg" > "serve-$1.yaml"
    stacks "serve-$1" & watcher=$!
    local only=--cuda-only
    if [ "${CPU:-}" = 1 ] || [[ -n "${CPU:-}" && " $CPU " == *" $1 "* ]]; then only=; fi
    # shellcheck disable=SC2086 # no word or one
    check "serve-$1" timeout -s INT "$limit" ./aegis bench backends $only \
      --config "serve-$1.yaml" --clip .samples/bench-1080p.mp4 --frames "${FRAMES:-150}" \
      --streams "${STREAMS:-2,8}" --json "$out/serve-$1.json"
    kill "$watcher" 2>/dev/null || true
  }
  variant one-session ''
  variant sessions-2 's/^  max_batch: 8$/  max_batch: 8\n  sessions: 2/'
  variant sessions-4 's/^  max_batch: 8$/  max_batch: 8\n  sessions: 4/'
  variant batch-8 's/^  max_batch: 8$/  max_batch: 8\n  gpu_batching: true/'
  variant batch-4 's/^  max_batch: 8$/  max_batch: 4\n  gpu_batching: true/'
  variant batch-2 's/^  max_batch: 8$/  max_batch: 2\n  gpu_batching: true/'
  variant batch-8-sessions-2 's/^  max_batch: 8$/  max_batch: 8\n  gpu_batching: true\n  sessions: 2/'
  variant graph 's/^  max_batch: 8$/  max_batch: 8\n  cuda_graph: true/'
  variant graph-sessions-2 's/^  max_batch: 8$/  max_batch: 8\n  cuda_graph: true\n  sessions: 2/'
  variant graph-sessions-4 's/^  max_batch: 8$/  max_batch: 8\n  cuda_graph: true\n  sessions: 4/'
  variant graph-batch-8 's/^  max_batch: 8$/  max_batch: 8\n  gpu_batching: true\n  cuda_graph: true/'
  variant graph-batch-4-sessions-2 's/^  max_batch: 8$/  max_batch: 4\n  gpu_batching: true\n  cuda_graph: true\n  sessions: 2/'
  variant graph-batch-4 's/^  max_batch: 8$/  max_batch: 4\n  gpu_batching: true\n  cuda_graph: true/'
  [ $((${#checks_passed[@]} + ${#checks_failed[@]})) -gt 0 ] || { echo "VARIANTS named none of the variants: $VARIANTS"; exit 2; }
  check_summary
  exit $?
fi
equivalence equivalence
for c in ${STAGES_CONFIGS:-cuda-gpu-models cuda-cpu-models cpu}; do
  stacks "$c" & watcher=$!
  check "stages-$c" timeout -s INT "$limit" ./aegis bench stages --config "$c.yaml" --clip .samples/bench-1080p.mp4 \
    --frames "${FRAMES_STAGES:-60}" --rounds 3 --json "$out/stages-$c.json"
  kill "$watcher" 2>/dev/null || true
done
stacks backends & watcher=$!
check backends-all-stages timeout -s INT "$limit" ./aegis bench backends --config cuda-gpu-models.yaml \
  --clip .samples/bench-1080p.mp4 --frames "${FRAMES:-150}" --streams "${STREAMS:-1,4,8}" \
  --json "$out/backends-gpu-models.json"
kill "$watcher" 2>/dev/null || true
check_summary
