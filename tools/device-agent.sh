#!/usr/bin/env bash
# Runs the agent itself with `backend.kind: cuda` ON the GPU machine, from the bundle that
# `just device-bundle` prepares on the build machine (.device-agent/bundle.tar.xz: the
# stripped `aegis` binary and the CUDA-vs-CPU stage test, a minimal FFmpeg 5.1 built by
# tools/device/build-ffmpeg-min.sh — the GPU machine has no libav —, ONNX Runtime, the
# segmentation model and the sample clips). Results go to $OUT (or .device-agent/out).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/.device-agent/out}"
mkdir -p "$out"
work=$(mktemp -d)
tar -C "$work" -xJf .device-agent/bundle.tar.xz
cd "$work"
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
./aegis version | tee "$out/version.txt"
echo "== CUDA stage vs CPU stage, frame by frame"
AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test --include-ignored --nocapture 2>&1 \
  | tee "$out/stages-test.txt" || echo "STAGE TEST FAILED"
echo "== aegis run, backend cuda, virtual background, H.264 recordings"
./aegis run --config cuda.yaml > "$out/run.log" 2>&1 || echo "RUN FAILED"
grep -v INFO "$out/run.log" | tail -20
find .demo -name '*.mp4' -printf '%p %s\n' | sort | tee "$out/recordings.txt"
echo "== RTSP camera (tools/device/rtsp_serve.py), backend cuda, 10 s"
python3 rtsp_serve.py 8554 bench-720p.h264 30 > "$out/rtsp-server.txt" 2>&1 &
server=$!
sleep 1
# One SIGINT from here (timeout(1) would also signal the process group: a second signal
# skips finalising the recordings).
./aegis run --config rtsp.yaml > "$out/rtsp.log" 2>&1 &
agent=$!
sleep 10
kill -INT "$agent" 2>/dev/null || true
wait "$agent" || true
kill "$server" 2>/dev/null || true
grep -E "NVDEC|connected|stream cam|error" "$out/rtsp.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -8
echo "== aegis bench backends (same process: cpu, cuda)"
./aegis bench backends --clip .samples/bench-1080p.mp4 --frames "${FRAMES:-300}" \
  --streams "${STREAMS:-1,4}" --json "$out/backends.json" 2>&1 | tee "$out/backends.txt"
echo "== aegis bench backends --all-stages (moderation, background, faces, timestamp)"
./aegis bench backends --all-stages --clip .samples/bench-1080p.mp4 --frames "${FRAMES:-300}" \
  --streams 1 --json "$out/backends-all.json" 2>&1 | tee "$out/backends-all.txt"
echo "== aegis bench backends, no stages (decode + download + sink)"
for clip in bench-1080p bench-1080p-hq; do
  ./aegis bench backends --config decode.yaml --clip ".samples/$clip.mp4" --frames "${FRAMES:-300}" \
    --streams 1,4,8 --json "$out/decode-$clip.json" 2>&1 | tee "$out/decode-$clip.txt"
done
