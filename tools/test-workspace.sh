#!/usr/bin/env bash
# Every test of every crate on the host: with cargo-nextest when it is installed (tests of all
# binaries run side by side, each in its own process; settings in .config/nextest.toml), else
# `cargo test` one binary after another (the same tests, about twice the wall time on 2
# cores: most of it is spent waiting on brokers, agents, PostgreSQL and Chromium). Doc tests
# run with `cargo test --doc` either way (nextest does not run them).
#
#   tools/test-workspace.sh          build what is needed and run the tests
#   tools/test-workspace.sh build    only build the tests (and the binaries they run)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = build ]; then
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-run
  else
    cargo test --workspace --no-run
  fi
  exit 0
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  echo "test-workspace: cargo-nextest is not installed; running the tests with cargo test" \
    "(cargo install cargo-nextest --locked for the parallel run)"
  cargo test --workspace --no-fail-fast
fi
