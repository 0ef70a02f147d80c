#!/usr/bin/env bash
# Runs the agent itself with `backend.kind: cuda` ON the GPU machine, from the bundle that
# `just device-bundle` prepares on the build machine (.device-agent/bundle.tar.xz: the
# stripped `aegis` binary and the CUDA-vs-CPU stage test, a minimal FFmpeg 5.1 built by
# tools/device/build-ffmpeg-min.sh — the GPU machine has no libav —, ONNX Runtime, the
# segmentation model and the sample clips). Results go to $OUT (or .device-agent/out). Every
# check runs even when an earlier one fails; the summary lists them, and the script exits 1
# if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/.device-agent/out}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck source=tools/device/checks.sh
source tools/device/checks.sh
work=$(mktemp -d)
tar -C "$work" -xJf .device-agent/bundle.tar.xz
cd "$work"
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
./aegis version | tee "$out/version.txt"

# `aegis run --config cuda.yaml` succeeds and leaves at least one recording.
run_cuda() {
  ./aegis run --config cuda.yaml > "$out/run.log" 2>&1 || {
    tail -20 "$out/run.log"
    return 1
  }
  grep -v INFO "$out/run.log" | tail -20
  find .demo -name '*.mp4' -printf '%p %s\n' | sort | tee "$out/recordings.txt"
  [ -s "$out/recordings.txt" ] || { echo "no recording written"; return 1; }
}

# A live camera (tools/device/rtsp_serve.py) for 10 s, then one SIGINT (timeout(1) would also
# signal the process group: a second signal skips finalising the recordings). Passes when the
# agent stops cleanly, decoded on NVDEC and delivered frames.
run_rtsp() {
  python3 rtsp_serve.py 8554 bench-720p.h264 30 > "$out/rtsp-server.txt" 2>&1 &
  local server=$! agent rc=0
  sleep 1
  ./aegis run --config rtsp.yaml > "$out/rtsp.log" 2>&1 &
  agent=$!
  sleep 10
  kill -INT "$agent" 2>/dev/null || true
  wait "$agent" || rc=$?
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  sed 's/\x1b\[[0-9;]*m//g' "$out/rtsp.log" | grep -E "NVDEC|connected|stream cam|error" | tail -8 || true
  [ "$rc" -eq 0 ] || { echo "aegis exited $rc"; return 1; }
  grep -q "decoding on NVDEC" "$out/rtsp.log" || { echo "the camera was not decoded on NVDEC"; return 1; }
  grep -Eq "^stream cam: [0-9]+ frames decoded, [1-9][0-9]* delivered" "$out/rtsp.log" \
    || { echo "no frames delivered from the camera"; return 1; }
}

# The GPU-engine test needs ONNX Runtime with the CUDA provider: tools/device-gpu-inference.sh.
check stages-test env AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test \
  --include-ignored --nocapture --skip gpu_engine_matches_the_cpu_engine
check run-cuda run_cuda
check rtsp run_rtsp
check bench-backends ./aegis bench backends --clip .samples/bench-1080p.mp4 \
  --frames "${FRAMES:-300}" --streams "${STREAMS:-1,4}" --json "$out/backends.json"
check bench-backends-all-stages ./aegis bench backends --all-stages \
  --clip .samples/bench-1080p.mp4 --frames "${FRAMES:-300}" --streams 1 \
  --json "$out/backends-all.json"
for clip in bench-1080p bench-1080p-hq; do
  check "bench-decode-$clip" ./aegis bench backends --config decode.yaml \
    --clip ".samples/$clip.mp4" --frames "${FRAMES:-300}" --streams 1,4,8 \
    --json "$out/decode-$clip.json"
done
check_summary
