#!/usr/bin/env bash
# Runs the CUDA kernel tests and benchmarks ON the GPU machine, from the .device/ folder that
# `just device-build` prepares on the build machine (test and bench binaries, golden files
# from the CPU implementations). Results go to $OUT (or .device/out).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.device/out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
echo "== kernel tests against the CPU implementations"
AEGIS_CUDA_GOLDEN=.device/golden .device/kernels-test --include-ignored --test-threads=1 --nocapture 2>&1 | tee "$out/tests.txt"
echo "== PyTorch baseline"
python3 tools/device/torch_preprocess.py "$out/torch.json" 2>&1 | tee "$out/torch.txt" || echo "PyTorch baseline failed"
echo "== benchmarks"
.device/aegis-cuda-bench --torch "$out/torch.json" --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
if [ -f .device-nvdec/clip.h264 ]; then
  echo "== NVDEC"
  pip install -q --no-deps --target /tmp/pyav .device-nvdec/av-*.whl 2>&1 | tail -1 || true
  mkdir -p "$out/dump"
  .device/aegis-cuda-bench --h264 .device-nvdec/clip.h264 --dump "$out/dump" --json "$out/bench-nvdec.json" 2>&1 | grep -E "NVDEC|pipeline" | tee "$out/nvdec.txt"
  python3 tools/device/cpu_decode.py .device-nvdec/clip.h264 "$out/dump" "$out/cpu-decode.json" 2>&1 | tee -a "$out/nvdec.txt" || echo "CPU decode baseline failed"
fi
