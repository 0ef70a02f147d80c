#!/usr/bin/env bash
# Lists the tests that skipped because a tool was missing (each records itself in the file
# named by $1, through record_skip in tests/src/lib.rs and its copies in hal/ and models/
# tests), loudly, and fails when any did while CI is set: CI must run every test.
set -euo pipefail
log=${1:?usage: tools/test-skips.sh SKIP_LOG}
if [ ! -s "$log" ]; then
  echo "test-skips: no test was skipped"
  exit 0
fi
n=$(sort -u "$log" | wc -l)
bar=$(printf '%78s' '' | tr ' ' '!')
{
  echo "$bar"
  echo "SKIPPED: $n test(s) did not run their checks on this machine (install what they name:"
  echo "tools/setup.sh):"
  sort -u "$log" | sed 's/^/  /'
  echo "$bar"
} >&2
if [ -n "${CI:-}" ]; then
  echo "test-skips: CI is set and $n test(s) skipped: failing (CI must run every test)" >&2
  exit 1
fi
