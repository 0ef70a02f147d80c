#!/usr/bin/env bash
# The jetson backend's decoder (issue 23) on a real GPU, ON the GPU machine, in one device
# call carrying .device-jetson/bundle.tar.xz (`tools/device-jetson-standin.sh bundle` builds
# it here, on the build machine). There is no Jetson: the decoder, NvBufSurface, the VIC and
# libcuda's EGL interop are the tests' stand-ins (hal/jetson/tests), whose "NVMM" memory the
# libcuda stand-in page-locks with the real driver so that CUDA works on it in place, as
# Orin's iGPU does on NVMM. Checks:
#   - nvmm-source: hal's `a_jetson_file_source_lends_nvmm_frames_that_cuda_reads_and_writes_in_place`
#     (a file source of the jetson backend: lent frames read, written and downloaded by the GPU,
#     given back across threads, nothing left mapped);
#   - nvmm-recording: hal's `a_jetson_recording_encodes_the_nvmm_surfaces_in_place_with_no_download`
#     (the record sink hands the NVMM surfaces to the stand-in hardware encoder: no download);
#   - nvmm-camera: hal's `codec::nvmm_camera::tests` (v4l2 sources on the UVC camera
#     stand-in: frames captured into NVMM, every pixel downloaded by the GPU as the camera
#     wrote it, a GPU write in place, an unplug and a reconnect; a hung camera stalled but a
#     pipeline holding every surface not; a camera NVMM cannot take handed to the CPU
#     capture; nothing left mapped);
#   - nvdec-stages, lent-frames: the CUDA backend's NVDEC path (its packet framing now shared
#     with the jetson decoder) and lent frames against pooled ones, as before.
# Results go to $OUT (or .device-jetson/out); exit 1 if a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = bundle ]; then
  target="${CARGO_TARGET_DIR:-target}"
  exe() { # CARGO TEST ARGS... -> the test executable
    cargo test --release "$@" --no-run --message-format=json 2>/dev/null \
      | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4
  }
  hal=$(exe -p aegis-hal --lib)
  stages=$(exe -p aegis-models --test cuda_stages)
  [ -d .device-libav ] || AEGIS_BIN="$target/release/aegis" FFMIN_TESTS=0 tools/device/build-ffmpeg-min.sh .device-libav
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/lib" "$stage/.models" "$stage/.samples"
  cp "$hal" "$stage/hal-test"
  cp "$stages" "$stage/cuda-stages-test"
  strip "$stage/hal-test" "$stage/cuda-stages-test"
  cp -L .device-libav/*.so* "$stage/lib/"
  cp .models/libonnxruntime.so.1.32.0 .models/selfie_segmentation.onnx .models/nudenet-320n.onnx \
    "$stage/.models/"
  cp .samples/bench-720p.mp4 .samples/demo.mp4 .samples/astronaut.png "$stage/.samples/"
  tools/device/jetson-stubs.sh "$stage/stubs" >/dev/null
  mkdir -p .device-jetson
  tar -C "$stage" -cf - . | xz -T0 -6 > .device-jetson/bundle.tar.xz
  du -h .device-jetson/bundle.tar.xz
  exit 0
fi
out="${OUT:-$PWD/.device-jetson/out}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck source=tools/device/checks.sh
source tools/device/checks.sh
work=$(mktemp -d)
tar -C "$work" -xJf .device-jetson/bundle.tar.xz
cd "$work"
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
check nvmm-source env AEGIS_JETSON_STUBS="$PWD/stubs" AEGIS_SAMPLES_DIR=.samples ./hal-test \
  a_jetson_file_source_lends_nvmm_frames_that_cuda_reads_and_writes_in_place --include-ignored --nocapture
check nvmm-recording env AEGIS_JETSON_STUBS="$PWD/stubs" AEGIS_SAMPLES_DIR=.samples ./hal-test \
  a_jetson_recording_encodes_the_nvmm_surfaces_in_place_with_no_download --include-ignored --nocapture
check nvmm-camera env AEGIS_JETSON_STUBS="$PWD/stubs" ./hal-test \
  codec::nvmm_camera::tests:: --include-ignored --nocapture
check nvdec-stages env AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test \
  device_stages_equal_the_host_stages --include-ignored --nocapture
check lent-frames env AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test \
  lent_device_frames_give_what_pooled_ones_give --include-ignored --nocapture
check_summary
