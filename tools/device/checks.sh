# shellcheck shell=bash
# shellcheck disable=SC2154 # $out is set by the script that sources this file
# Sourced by the tools/device-*.sh scripts: named checks whose failures are counted, not
# swallowed. `check NAME CMD...` runs CMD (output shown and kept in "$out/NAME.txt"), records
# whether it passed and goes on; `check_summary` prints the tally, writes "$out/summary.txt"
# and returns non-zero when any check failed, so the script exits non-zero.
# Needs $out (the results folder) set before use.

checks_passed=()
checks_failed=()

check() {
  local name=$1
  shift
  echo "== $name"
  # `if` keeps `set -e` from ending the script here; pipefail makes the command's failure,
  # not tee's success, the pipeline's status.
  if "$@" 2>&1 | tee "$out/$name.txt"; then
    checks_passed+=("$name")
  else
    echo "!! $name FAILED (exit ${PIPESTATUS[0]})"
    checks_failed+=("$name")
  fi
}

check_summary() {
  {
    echo "== summary: ${#checks_passed[@]} passed, ${#checks_failed[@]} failed"
    local n
    for n in "${checks_passed[@]}"; do echo "passed: $n"; done
    for n in "${checks_failed[@]}"; do echo "FAILED: $n"; done
  } | tee "$out/summary.txt"
  [ "${#checks_failed[@]}" -eq 0 ]
}
