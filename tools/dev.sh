#!/usr/bin/env bash
# Bootstrap for a fresh Debian machine: installs what the build needs (apt packages, `just`
# in a project-local venv, the pinned sample photos), then runs a Justfile recipe.
#
#   tools/dev.sh demo     # set up, build, and play the sample clip through the pipeline
#   tools/dev.sh test     # set up, lint, and run every test
#   tools/dev.sh RECIPE   # any other Justfile recipe (bench, lint, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
recipe="${1:-demo}"
shift || true
tools/setup.sh
# setup.sh may have just installed rustup's toolchain; this shell needs it on PATH too.
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
exec .tools/venv/bin/just "$recipe" "$@"
