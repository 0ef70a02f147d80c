#!/usr/bin/env bash
# Fuzzes the MAML parser, the device-side verifier, the source-URL policy (against a port of
# libavformat's av_url_split) and the time parser with cargo-fuzz (libFuzzer, nightly).
# Installs the nightly toolchain and a pinned cargo-fuzz when missing.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET]     (default 300; CI uses a short run)
#   FUZZ_SETUP_ONLY=1 tools/fuzz.sh        (install what it needs, fuzz nothing)
#   tools/fuzz.sh build                    (install, and build every target as `run` does)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-300}"
CARGO_FUZZ_VERSION=0.13.1
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked -q
fi
# Only the toolchain and cargo-fuzz.
[ -z "${FUZZ_SETUP_ONLY:-}" ] || exit 0
cd ota
# The sanitizer build of every target, with the options `cargo fuzz run` builds with (so the
# runs below find it done): `just test` builds it beside the host's tests, at low priority.
if [ "$SECONDS_PER_TARGET" = build ]; then
  cargo +nightly fuzz build
  exit 0
fi
for target in maml_parse verify url_policy time_parse; do
  echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
  log="fuzz/$target.log"
  # -rss_limit_mb: unbounded memory is a failure; -max_len: a little over the 128 KB limit.
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb=1024 -max_len=140000 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target FAILED (crash input under ota/fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
done
