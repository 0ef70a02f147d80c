#!/usr/bin/env bash
# Builds what tools/device-agent.sh runs on the GPU machine into .device-agent/bundle.tar.xz:
# the stripped release `aegis` and the CUDA-vs-CPU stage test, a minimal FFmpeg 5.1 (the
# GPU machine has no libav; tools/device/build-ffmpeg-min.sh), ONNX Runtime and the
# models (from `just models`), the sample clips (plus an H.265 one). Must stay under the 64 MiB a
# device call can carry.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p aegis-agent --bins
test_exe=$(cargo test --release -p aegis-models --test cuda_stages --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*cuda_stages-[^"]*"' | tail -1 | cut -d'"' -f4)
[ -d .device-libav ] || AEGIS_BIN="$target/release/aegis" FFMIN_TESTS=0 tools/device/build-ffmpeg-min.sh .device-libav
for f in bench-1080p.mp4 bench-720p.mp4; do
  [ -f ".samples/$f" ] || "$target/release/aegis" sample --out ".samples/$f" \
    --width "$([ "$f" = bench-720p.mp4 ] && echo 1280 || echo 1920)" \
    --height "$([ "$f" = bench-720p.mp4 ] && echo 720 || echo 1080)"
done
# The astronaut pans across this one: a face from the first frame (moderation, detection).
[ -f .samples/demo.mp4 ] || "$target/release/aegis" sample --out .samples/demo.mp4 \
  --background .samples/astronaut.png
# H.265 in MP4 (hvcC) for the NVDEC-vs-libavcodec stage test (Debian's ffmpeg has x265).
if [ ! -f .samples/bench-720p-hevc.mp4 ]; then
  ffmpeg -v error -y -i .samples/bench-720p.mp4 -frames:v 60 -c:v libx265 -preset fast \
    -x265-params log-level=error -tag:v hvc1 .samples/bench-720p-hevc.mp4
fi
# A realistic one for the decode comparison: film-grain noise, ~15 Mbit/s, B-frames, 5 s.
if [ ! -f .samples/bench-1080p-hq.mp4 ]; then
  ffmpeg -v error -y -i .samples/bench-1080p.mp4 -t 5 -vf "noise=alls=12:allf=t" -c:v libx264 \
    -preset veryfast -b:v 15M -maxrate 15M -bufsize 30M .samples/bench-1080p-hq.mp4
fi
# Raw Annex-B for the RTSP server on the GPU machine (tools/device/rtsp_serve.py), without
# B-frames (that server stamps RTP in file order).
[ -f .samples/bench-720p.h264 ] || ffmpeg -v error -y -i .samples/bench-720p.mp4 -c:v libx264 \
  -preset veryfast -bf 0 -b:v 4M -f h264 .samples/bench-720p.h264
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib" "$stage/.models" "$stage/.samples"
cp "$target/release/aegis" "$stage/aegis"
cp "$test_exe" "$stage/cuda-stages-test"
strip "$stage/aegis" "$stage/cuda-stages-test"
cp -L .device-libav/*.so* "$stage/lib/"
cp .models/libonnxruntime.so.1.32.0 .models/selfie_segmentation.onnx .models/nudenet-320n.onnx \
  "$stage/.models/"
cp .samples/bench-1080p.mp4 .samples/bench-1080p-hq.mp4 .samples/bench-720p.mp4 \
  .samples/bench-720p-hevc.mp4 .samples/demo.mp4 \
  .samples/astronaut.png .samples/chelsea.png .samples/coffee.png .samples/rocket.png \
  .samples/motorcycle_left.png .samples/hubble_deep_field.png "$stage/.samples/"
cp tools/device/cuda.yaml tools/device/decode.yaml tools/device/rtsp.yaml \
  tools/device/rtsp_serve.py .samples/bench-720p.h264 "$stage/"
mkdir -p .device-agent
tar -C "$stage" -cf - . | xz -T0 -6 > .device-agent/bundle.tar.xz
# The stage test alone (no agent, no 1080p clips), small enough to travel with another
# NVRTC: tools/device-nvrtc12.sh runs it with CUDA 12's NVRTC from PyPI.
rm -f "$stage/aegis" "$stage"/.samples/bench-1080p*.mp4
tar -C "$stage" -cf - . | xz -T0 -6 > .device-agent/tests.tar.xz
mkdir -p .device-nvrtc12
[ -n "$(ls .device-nvrtc12/*.whl 2>/dev/null)" ] || pip download -q --no-deps -d .device-nvrtc12 \
  nvidia-cuda-nvrtc-cu12==12.6.85 --only-binary=:all: --platform manylinux_2_12_x86_64
du -h .device-agent/*.tar.xz .device-nvrtc12/*.whl
