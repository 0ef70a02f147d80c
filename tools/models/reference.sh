#!/usr/bin/env bash
# Writes the Python reference outputs the Rust model tests compare against (see reference.py):
# MediaPipe's selfie masks (and a check that .models/selfie_segmentation.onnx matches them) and
# NudeNet's detections, for the sample photos. Runs in .tools/ref-venv, built here once with
# pinned packages (wheels cached in the models' wheel cache, so later runs need no network).
#
#   tools/models/reference.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT="${1:?usage: tools/models/reference.sh OUT_DIR}"
MODELS="${AEGIS_MODELS_DIR:-.models}"
CACHE="$MODELS/.wheels"
# The sample photos (tools/fetch-media.sh), all RGB8 PNGs; only astronaut has a person in it.
PHOTOS=(astronaut coffee chelsea rocket motorcycle_left hubble_deep_field)

# mediapipe's own dependencies trimmed to what mp.solutions.selfie_segmentation needs: no
# jax/jaxlib/sounddevice, matplotlib stubbed (reference.py), and opencv-python-headless (which
# nudenet wants) instead of opencv-contrib-python. numpy < 2: mediapipe 0.10.14 is built on 1.x.
REQS=(mediapipe==0.10.14 nudenet==3.4.2 onnxruntime==1.32.0 numpy==1.26.4
  opencv-python-headless==4.10.0.84 protobuf==4.25.8 absl-py==2.1.0 attrs==23.2.0
  flatbuffers==24.3.25 packaging==24.1)
venv=.tools/ref-venv

# One run at a time: test runners that start each test in its own process (cargo-nextest)
# start this script from several tests at once, and they share the venv, the fetched files
# and the output directory. The later runs wait, then find the venv built.
mkdir -p .tools
exec 9>".tools/ref-venv.lock"
flock 9

tools/fetch-media.sh
tools/fetch-models.sh "$MODELS"

if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "${REQS[*]}" ]; then
  echo "reference: creating $venv (${REQS[*]})"
  rm -rf "$venv"
  python3 -m venv "$venv"
  vpip=("$venv/bin/pip" -q --disable-pip-version-check)
  mkdir -p "$CACHE"
  if ! "${vpip[@]}" install --no-index --no-deps --find-links "$CACHE" "${REQS[@]}" 2>/dev/null; then
    "${vpip[@]}" download --no-deps --only-binary=:all: --find-links "$CACHE" -d "$CACHE" "${REQS[@]}"
    "${vpip[@]}" install --no-index --no-deps --find-links "$CACHE" "${REQS[@]}"
  fi
  echo "${REQS[*]}" >"$venv/.pinned"
fi

paths=()
for p in "${PHOTOS[@]}"; do paths+=(".samples/$p.png"); done
mkdir -p "$OUT"
# MediaPipe/TFLite/absl log to stderr on every graph start: keep the output readable.
log="$OUT/reference.log"
run() { "$venv/bin/python" tools/models/reference.py "$@" 2>>"$log" || { cat "$log" >&2; exit 1; }; }
: >"$log"
run seg "$OUT" --onnx "$MODELS/selfie_segmentation.onnx" "${paths[@]}"
run nudenet "$OUT" "${paths[@]}"
echo "reference: outputs in $OUT/ (stderr of the runtimes in $log)"
