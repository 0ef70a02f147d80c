#!/usr/bin/env bash
# Builds the C stand-ins of libnvbufsurface, libnvbufsurftransform and libcuda's EGL interop
# (hal/jetson/tests/stub) into DIR/full and DIR/partial (without NvBufSurfaceSyncForDevice),
# for a machine that runs the stand-in tests without a C compiler (the GPU machine): point
# AEGIS_JETSON_STUBS at DIR there. Same flags as hal/jetson/tests/stub_support/mod.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: $0 DIR}"
stub=hal/jetson/tests/stub
cc="${CC:-cc}"
for variant in full partial; do
  mkdir -p "$out/$variant"
  defines=()
  [ "$variant" = partial ] && defines=(-DAEGIS_STUB_WITHOUT_SYNC_FOR_DEVICE)
  build() { # SOURCE LIB [DEFINES...]
    local source=$1 lib=$2
    shift 2
    "$cc" -shared -fPIC -fvisibility=hidden -O1 -Wall -Wextra -Werror -I "$stub" "$@" \
      "$stub/$source" -o "$out/$variant/$lib"
  }
  build nvbufsurface.c libnvbufsurface.so.1.0.0 "${defines[@]}"
  build nvbufsurftransform.c libnvbufsurftransform.so.1.0.0
  build cuda_egl.c libcuda.so.1
done
ls -l "$out"/*
