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
