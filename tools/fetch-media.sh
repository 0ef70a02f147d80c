#!/usr/bin/env bash
# Fetches the sample photos the clip generator pans across, from a pinned PyPI package
# (scikit-image ships them in skimage/data/), and checks each file's SHA-256. Nothing is
# downloaded from a media or model hub; nothing large is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIMAGE_VERSION=0.25.2
declare -A SHA256=(
  [astronaut.png]=88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
  [coffee.png]=cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
  [chelsea.png]=596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
)
OUT=.samples
mkdir -p "$OUT"

ok=1
for f in "${!SHA256[@]}"; do
  if [ ! -f "$OUT/$f" ] || ! echo "${SHA256[$f]}  $OUT/$f" | sha256sum -c --quiet - 2>/dev/null; then ok=0; fi
done
[ "$ok" = 1 ] && exit 0

pip=.tools/venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-media: scikit-image==$SKIMAGE_VERSION (sample photos)"
$pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  "scikit-image==$SKIMAGE_VERSION" -d "$tmp"
wheel=$(ls "$tmp"/scikit_image-*.whl)
python3 - "$wheel" "$OUT" "${!SHA256[@]}" <<'PY'
import sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        with open(f"{out}/{n}", "wb") as f:
            f.write(z.read(f"skimage/data/{n}"))
PY
for f in "${!SHA256[@]}"; do
  echo "${SHA256[$f]}  $OUT/$f" | sha256sum -c --quiet - || { echo "fetch-media: checksum mismatch for $f" >&2; rm -f "$OUT/$f"; exit 1; }
done
echo "fetch-media: ${!SHA256[*]} -> $OUT/"
