#!/usr/bin/env bash
# Cross-compiles the crates that need no libav (config, ota, sensors, cuda, jetson) for the Jetson's
# aarch64 and runs their tests under qemu-user. On the aarch64 build the CUDA crate finds no
# driver and must say so cleanly (its GPU tests are ignored here as on any machine without
# one). aegis-jetson's tests check its NvBufSurface bindings' layouts on aarch64 and build their
# C stand-in libraries with aarch64-linux-gnu-gcc (its build.rs names the target's compiler).
# Installs the Rust target when missing (tools/setup.sh installs the linker and qemu).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -q "^$target\$" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  tools/setup.sh # installs gcc-aarch64-linux-gnu and qemu-user-static
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# qemu's library root: the cross toolchain's sysroot, or Debian's multiarch arm64 libraries
# when they are installed (tools/cross-agent.sh adds them): with those present, a program
# run from the sysroot mixes two arm64 glibc builds and hangs.
qemu_root=/usr/aarch64-linux-gnu
[ ! -e /lib/ld-linux-aarch64.so.1 ] || qemu_root=/
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $qemu_root"
# Tests that run one of the crate's binaries run it through the same emulator.
export AEGIS_CROSS_RUNNER="$CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER"
# Without ota's `gateway` feature: the device side (verification, policy, model store, receipts)
# is what runs on a Jetson; `chimera` and its service are operator/cloud tools, tested on the host.
cargo test --profile cross --target "$target" --no-default-features \
  -p aegis-config -p aegis-ota -p aegis-sensors -p aegis-cuda -p aegis-jetson --lib --tests
