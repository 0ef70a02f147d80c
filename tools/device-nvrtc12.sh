#!/usr/bin/env bash
# On the GPU machine (CUDA 13 driver and NVRTC): compiles the kernels with CUDA 12's NVRTC
# instead (nvidia-cuda-nvrtc-cu12 from PyPI, what JetPack 6 ships) and runs the CUDA-vs-CPU
# stage tests with them — the same binary, built once, on both NVRTC versions.
# Needs .device-agent/tests.tar.xz and .device-nvrtc12/*.whl from tools/device-bundle.sh.
# Exits 1 when the tests fail or the kernels were not compiled by NVRTC 12.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/.device-nvrtc12/out}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck source=tools/device/checks.sh
source tools/device/checks.sh
work=$(mktemp -d)
tar -C "$work" -xJf .device-agent/tests.tar.xz
python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
  .device-nvrtc12/*.whl "$work/nvrtc"
lib="$work/nvrtc/nvidia/cuda_nvrtc/lib"
# cudarc tries libnvrtc.so first: this one, ahead of the system's CUDA 13 library.
ln -sf libnvrtc.so.12 "$lib/libnvrtc.so"
cd "$work"
export LD_LIBRARY_PATH="$lib:$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
check stages-test-nvrtc12 env AEGIS_MODELS_DIR=.models AEGIS_SAMPLES_DIR=.samples \
  ./cuda-stages-test --include-ignored --nocapture --skip gpu_engine_matches_the_cpu_engine
# The tests print "kernels compiled by NVRTC <version>": passing on the system's NVRTC 13
# would prove nothing about JetPack's.
check compiled-by-nvrtc12 grep -m1 "kernels compiled by NVRTC 12\." "$out/stages-test-nvrtc12.txt"
check_summary
