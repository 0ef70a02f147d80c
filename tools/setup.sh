#!/usr/bin/env bash
# Installs the build and test dependencies (idempotent; quick when everything is present).
#  - Debian packages: C toolchain + clang (bindgen), FFmpeg's libav* headers, the ffmpeg CLI
#    (baseline benchmarks and ffprobe checks in tests), python3-venv.
#  - `just`, pinned, from PyPI (rust-just) into .tools/venv (Debian has no `just` package).
#  - A Rust toolchain via rustup only if cargo is missing.
#  - Sample photos: tools/fetch-media.sh (pinned scikit-image wheel, checksummed files).
set -euo pipefail
cd "$(dirname "$0")/.."

JUST_VERSION=1.43.0
APT_PACKAGES=(build-essential pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  ffmpeg python3 python3-venv python3-pip ca-certificates curl)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if [ ! -x .tools/venv/bin/just ] || ! .tools/venv/bin/just --version | grep -q " $JUST_VERSION"; then
  echo "setup: installing just $JUST_VERSION into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check "rust-just==$JUST_VERSION"
fi

tools/fetch-media.sh
