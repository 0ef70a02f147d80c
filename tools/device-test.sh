#!/usr/bin/env bash
# Runs the CUDA kernel tests and benchmarks ON the GPU machine, from the .device/ folder that
# `just device-build` prepares on the build machine (test and bench binaries, golden files
# from the CPU implementations). Results go to $OUT (or .device/out). Every check runs even
# when an earlier one fails; the summary lists them, and the script exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.device/out}"
mkdir -p "$out"
# shellcheck source=tools/device/checks.sh
source tools/device/checks.sh

# With libcuda hidden (AEGIS_CUDA_HIDE), opening the GPU must fail with the reason, not panic
# and not use the GPU: the agent's fallback path, on a machine that has a driver.
hidden_driver_is_refused() {
  local o
  if o=$(AEGIS_CUDA_HIDE=libcuda .device/aegis-cuda-bench 2>&1); then
    echo "aegis-cuda-bench ran with libcuda hidden: $o"
    return 1
  fi
  echo "$o"
  grep -q "no CUDA driver.*hidden by AEGIS_CUDA_HIDE" <<<"$o"
}

# `just device-build` packs the golden files.
if [ -f .device/golden.tar.xz ]; then
  rm -rf .device/golden
  tar -C .device -xJf .device/golden.tar.xz
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
check kernel-tests env AEGIS_CUDA_GOLDEN=.device/golden .device/kernels-test \
  --include-ignored --test-threads=1 --nocapture
check hidden-driver hidden_driver_is_refused
check torch-baseline python3 tools/device/torch_preprocess.py "$out/torch.json"
check bench .device/aegis-cuda-bench --torch "$out/torch.json" --json "$out/bench.json"
# NVDEC decodes exactly what libavcodec decodes (H.264's decoding process is exact): every
# picture's hash against the list `just device-build` made with ffmpeg on the build machine.
same_pictures() {
  local nv=$1 cpu=$2
  [ -s "$nv" ] || { echo "$nv is missing: aegis-cuda-bench --dump did not write it"; return 1; }
  local n_nv n_cpu first
  n_nv=$(wc -l < "$nv")
  n_cpu=$(wc -l < "$cpu")
  [ "$n_nv" -eq "$n_cpu" ] || { echo "NVDEC gave $n_nv pictures, libavcodec $n_cpu"; return 1; }
  first=$(paste -d' ' "$nv" "$cpu" | awk '$1 != $2 {print NR - 1; exit}')
  [ -z "$first" ] || { echo "picture $first (and maybe more) differs from libavcodec's"; return 1; }
  echo "NVDEC vs libavcodec: all $n_nv pictures identical"
}

if [ -d .device-nvdec ]; then
  for clip in .device-nvdec/*.h264; do
    name=$(basename "$clip" .h264)
    mkdir -p "$out/$name"
    # The decoder engines' load while the parallel-decode figures are taken.
    nvidia-smi dmon -s u -o T > "$out/$name/dmon.txt" 2>&1 &
    dmon=$!
    check "nvdec-$name" .device/aegis-cuda-bench --h264 "$clip" --dump "$out/$name" \
      --json "$out/$name/bench.json"
    kill "$dmon" 2>/dev/null || true
    check "nvdec-vs-libavcodec-$name" same_pictures "$out/$name/nvdec-frames.sha256" \
      ".device-nvdec/$name.libavcodec.sha256"
  done
else
  echo "no .device-nvdec: the NVDEC checks were not run"
fi
check_summary
