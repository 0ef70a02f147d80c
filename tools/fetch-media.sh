#!/usr/bin/env bash
# Fetches the sample photos the clip generator pans across (and the model tests run on), from a
# pinned PyPI package (scikit-image ships them in skimage/data/), and checks each file's
# SHA-256. JPEGs are converted to RGB8 PNGs with ffmpeg (the Rust side loads PNG only); their
# decoded pixels are checked too (a different JPEG decoder may round differently: warned, kept).
# Nothing is downloaded from a media or model hub; nothing large is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIMAGE_VERSION=0.25.2
# file in skimage/data/ -> sha256 of that file
declare -A SHA256=(
  [astronaut.png]=88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
  [coffee.png]=cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
  [chelsea.png]=596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
  [motorcycle_left.png]=db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179
  [rocket.jpg]=c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c
  [hubble_deep_field.jpg]=3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4
)
# JPEG -> sha256 of its decoded rgb24 pixels (ffmpeg 5.1, Debian 12), checked on the PNG made
declare -A PIXELS_SHA256=(
  [rocket.jpg]=9d316f4a7bf057b2f1ab1f8198cff586965a6e078ef9c79ffa3cbadcce216200
  [hubble_deep_field.jpg]=43da23d772c827ea111642bfa0440ec68136300d8e9a1f3bebdbdd1515700439
)
OUT=.samples
mkdir -p "$OUT"

# Present already? PNGs from the wheel by checksum, converted ones by existence.
ok=1
for f in "${!SHA256[@]}"; do
  case "$f" in
    *.png) if [ ! -f "$OUT/$f" ] || ! echo "${SHA256[$f]}  $OUT/$f" | sha256sum -c --quiet - 2>/dev/null; then ok=0; fi ;;
    *.jpg) [ -f "$OUT/${f%.jpg}.png" ] || ok=0 ;;
  esac
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
python3 - "$wheel" "$tmp" "${!SHA256[@]}" <<'PY'
import sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        with open(f"{out}/{n}", "wb") as f:
            f.write(z.read(f"skimage/data/{n}"))
PY
for f in "${!SHA256[@]}"; do
  echo "${SHA256[$f]}  $tmp/$f" | sha256sum -c --quiet - || { echo "fetch-media: checksum mismatch for $f" >&2; exit 1; }
  case "$f" in
    *.png) mv "$tmp/$f" "$OUT/$f" ;;
    *.jpg)
      png="${f%.jpg}.png"
      ffmpeg -v error -y -i "$tmp/$f" -sws_flags accurate_rnd+full_chroma_int+bitexact \
        -pix_fmt rgb24 -flags +bitexact "$tmp/$png"
      px=$(ffmpeg -v error -i "$tmp/$png" -f rawvideo -pix_fmt rgb24 - | sha256sum | cut -d' ' -f1)
      [ "$px" = "${PIXELS_SHA256[$f]}" ] ||
        echo "fetch-media: warning: $png pixels differ from the pinned decode of $f (other JPEG decoder?)" >&2
      mv "$tmp/$png" "$OUT/$png" ;;
  esac
done
echo "fetch-media: ${!SHA256[*]} -> $OUT/ (JPEGs as PNG)"
