#!/usr/bin/env bash
# On the GPU machine (CUDA 13 driver and NVRTC): compiles the kernels with CUDA 12's NVRTC
# instead (nvidia-cuda-nvrtc-cu12 from PyPI, what JetPack 6 ships) and runs the CUDA-vs-CPU
# stage tests with them — the same binary, built once, on both NVRTC versions.
# Needs .device-agent/tests.tar.xz and .device-nvrtc12/*.whl from tools/device-bundle.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
tar -C "$work" -xJf .device-agent/tests.tar.xz
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
  .device-nvrtc12/*.whl "$work/nvrtc"
lib="$work/nvrtc/nvidia/cuda_nvrtc/lib"
# cudarc tries libnvrtc.so first: this one, ahead of the system's CUDA 13 library.
ln -sf libnvrtc.so.12 "$lib/libnvrtc.so"
cd "$work"
export LD_LIBRARY_PATH="$lib:$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples ./cuda-stages-test --include-ignored --nocapture 2>&1 \
  | grep -v InputSpec
