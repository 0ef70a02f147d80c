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
if [ -d .device-nvdec ]; then
  echo "== NVDEC vs libavcodec (PyAV)"
  pip install -q --no-deps --root-user-action=ignore --target /tmp/pyav .device-nvdec/av-*.whl >/dev/null 2>&1 || true
  for clip in .device-nvdec/*.h264; do
    name=$(basename "$clip" .h264)
    mkdir -p "$out/$name"
    echo "-- $name"
    .device/aegis-cuda-bench --h264 "$clip" --dump "$out/$name" --json "$out/$name/bench.json" 2>&1 | grep -E "NVDEC|pipeline|Error" | tee "$out/$name/nvdec.txt"
    python3 tools/device/cpu_decode.py "$clip" "$out/$name" "$out/$name/cpu.json" 2>&1 | tail -1 | tee -a "$out/$name/nvdec.txt"
  done
fi
