#!/usr/bin/env bash
# The whole agent for the Jetson's aarch64, cross-compiled (libav included: Debian's arm64
# packages) and tested under qemu-user:
#  * the unit tests of every device crate (config, ota without the operator-side `gateway`
#    feature, sensors, cuda, jetson, hal, models, agent), ONNX Runtime sessions included
#    (the aarch64 build of the pinned wheel, on an Orin's /proc/cpuinfo: tools/cross/qemu-run);
#  * the integration tests of the crates that need no libav (config, ota, sensors, cuda,
#    jetson) and the agent's (the binary itself): found from their tests/ directories, so
#    a new test file is included;
#  * the aarch64 `aegis` binary (the one the Yocto recipe installs) run on a real pipeline:
#    decode (arm64 libav), overlay, H.264 encode, MP4 recording and the SQLite store,
#    checked frame for frame by the host's ffprobe.
# All tests are built by ONE cargo invocation: two invocations over different package sets
# resolve different features and compiled about 55 dependencies twice.
#
# Needs root for apt: adds Debian's arm64 architecture and installs the arm64 libav*-dev
# packages (multiarch, beside the amd64 ones; about 280 packages, 30 s here). bindgen reads
# the arm64 headers from /usr/include/aarch64-linux-gnu; pkg-config the arm64 .pc files.
# On the aarch64 build the CUDA crate finds no driver and must say so cleanly; aegis-jetson's
# tests build their C stand-in libraries with aarch64-linux-gnu-gcc (its build.rs names the
# target's compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -q "^$target\$" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  tools/setup.sh # installs gcc-aarch64-linux-gnu and qemu-user-static
fi
# libssl: the WebRTC outputs' DTLS (str0m's OpenSSL backend).
libav=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavdevice-dev libssl-dev)
if [ ! -e /usr/lib/aarch64-linux-gnu/pkgconfig/libavcodec.pc ] || [ ! -e /usr/lib/aarch64-linux-gnu/pkgconfig/openssl.pc ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  echo "cross-test: installing Debian's arm64 libav and libssl packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${libav[@]/%/:arm64}" >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# `-L /`: the multiarch arm64 loader and libraries Debian installed beside the host's; an
# Orin's /proc/cpuinfo for ONNX Runtime (tools/cross/qemu-run says why).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/tools/cross/qemu-run"
# Tests that run one of the crate's binaries run it through the same emulator.
export AEGIS_CROSS_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=/
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--target=aarch64-linux-gnu -I/usr/include/aarch64-linux-gnu -I/usr/include"
# The models are the host's (the same files); ONNX Runtime is the aarch64 build of the same
# pinned wheel, checked against its own SHA-256.
models=.models/aarch64
mkdir -p "$models"
for f in selfie_segmentation.tflite selfie_segmentation.onnx nudenet-320n.onnx; do
  [ -e "$models/$f" ] || [ ! -e ".models/$f" ] || cp ".models/$f" "$models/$f"
done
AEGIS_MODELS_ARCH=aarch64 tools/fetch-models.sh "$models"
export AEGIS_MODELS_DIR="$PWD/$models"
# The agent's own integration test builds the aarch64 `aegis` in this same invocation (one
# feature resolution; a separate `cargo build --bins` took another 1 min 49 s in CI).
integration_dirs=(config ota sensors hal/cuda hal/jetson agent)
integration=()
for dir in "${integration_dirs[@]}"; do
  for t in "$dir"/tests/*.rs; do
    [ -e "$t" ] || continue
    # A test file of the operator-side gateway only (`#![cfg(feature = "gateway")]`) is
    # empty without that feature: building and linking it cost CI about a minute for 0 tests.
    grep -q '^#!\[cfg(feature = "gateway")\]' "$t" && continue
    integration+=(--test "$(basename "$t" .rs)")
  done
done
packages=()
for p in config ota sensors cuda jetson hal models agent; do packages+=(-p "aegis-$p"); done
# Without ota's `gateway` feature: the device side (verification, policy, model store, receipts)
# is what runs on a Jetson; `chimera` and its service are operator/cloud tools, tested on the host.
cross_test=(cargo test --profile cross --target "$target" --no-default-features "${packages[@]}"
  --lib "${integration[@]}")
# `tools/cross-test.sh build` stops after the build: `just test` runs the fuzzer beside the
# emulated tests, not beside this build (its own sanitizer build would halve both on 2 cores).
if [ "${1:-}" = build ]; then
  "${cross_test[@]}" --no-run
  exit 0
fi
"${cross_test[@]}"
"$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER" "target/$target/cross/aegis" version
# A real pipeline on aarch64: decode (arm64 libav), overlay, H.264 encode, MP4 recording and
# the SQLite store, checked frame for frame by the host's ffprobe.
run=$(mktemp -d)
trap 'rm -rf "$run"' EXIT
ffmpeg -loglevel error -f lavfi -i testsrc2=size=320x240:rate=25 -t 2 -c:v libx264 \
  -pix_fmt yuv420p "$run/clip.mp4"
cat >"$run/aegis.yaml" <<YAML
device: { id: cross-aarch64 }
pipeline:
  sources: [{ id: cam0, url: "file://$run/clip.mp4" }]
  stages: [{ kind: timestamp_overlay }]
  sinks: [{ kind: record, dir: $run/rec, segment_seconds: 60 }]
store: { path: $run/aegis.db }
web: { listen: "127.0.0.1:0" }
YAML
"$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER" "target/$target/cross/aegis" run --config "$run/aegis.yaml"
frames=$(find "$run/rec" -name '*.mp4' -exec ffprobe -v error -count_frames -select_streams v \
  -show_entries stream=nb_read_frames -of csv=p=0 {} \;)
[ "$frames" = 50 ] || { echo "cross-test: the aarch64 recording has ${frames:-no} frames, not 50" >&2; exit 1; }
echo "cross-test: the aarch64 agent decoded, overlaid, encoded and recorded all 50 frames"
