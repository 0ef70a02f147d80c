#!/usr/bin/env bash
# ONNX Runtime with the CUDA provider, for measuring GPU inference on the GPU machine (which has
# no ONNX Runtime GPU build): the pinned onnxruntime-gpu wheel from PyPI, checked against its
# SHA-256; its CUDA provider pruned to sm_90 cubins (H100/H200; tools/device/fatbin_keep_arch.py:
# the 284 MB library does not fit a device call whole) and packed with the C library into
# .ort-gpu/ort-gpu.tar.xz (about 60 MB: it travels alone, in the first of two device calls).
# For measuring only — never what ships to a device (on a Jetson the agent loads JetPack's
# ONNX Runtime with the TensorRT provider: docs/jetson.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=1.31.1
WHEEL=onnxruntime_gpu-$VERSION-cp312-cp312-manylinux_2_28_x86_64.whl
SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
out=.ort-gpu
mkdir -p "$out"
[ -s "$out/ort-gpu.tar.xz" ] && { echo "ort-gpu: $out/ort-gpu.tar.xz is there"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 "onnxruntime-gpu==$VERSION" -d "$work"
echo "$SHA256  $work/$WHEEL" | sha256sum -c --quiet
capi=onnxruntime/capi
unzip -q -o "$work/$WHEEL" "$capi/libonnxruntime_providers_cuda.so" \
  "$capi/libonnxruntime_providers_shared.so" "$capi/libonnxruntime.so.$VERSION" -d "$work"
mkdir -p "$work/pack"
python3 tools/device/fatbin_keep_arch.py "$work/$capi/libonnxruntime_providers_cuda.so" \
  "$work/pack/libonnxruntime_providers_cuda.so" 90
cp "$work/$capi/libonnxruntime_providers_shared.so" "$work/$capi/libonnxruntime.so.$VERSION" "$work/pack/"
tar -C "$work/pack" -cf - . | xz -9e -T0 > "$out/ort-gpu.tar.xz"
du -h "$out/ort-gpu.tar.xz"
