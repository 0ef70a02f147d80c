#!/usr/bin/env bash
# Checks the Yocto layer (yocto/meta-aegis) as far as that is possible without BitBake, which
# cannot run here (no build, no image, no flash: yocto/meta-aegis/README.md says what that
# leaves unchecked):
#   1. oelint-adv 9.11.2 (pinned and hash-checked in tools/yocto/requirements.txt, installed
#      into .tools/yocto-venv) over conf/layer.conf and every recipe and append, with the
#      layer's .oelint.cfg: no finding of any severity; kas/*.yml against kas 5.5's schema;
#   2. tools/yocto-crates.py --check: the agent recipe's crate list is what Cargo.lock gives
#      (a dependency bump without `tools/yocto-crates.py` fails here);
#   3. tools/yocto/check_layer.py: BBFILES covers every recipe, SRC_URI files exist and remote
#      entries carry SHA-256s, the agent recipe's version and licence checksum match the
#      checkout, the models and ONNX Runtime recipes pin what tools/fetch-models.sh pins; files
#      the agent recipe installs from deploy/ that this checkout lacks are recorded as skips;
#   4. aegis-system's units, rendered by the recipe's own script, through systemd-analyze verify
#      (any warning fails);
#   5. tools/yocto/swu_check.py: a CMS-signed .swu built from the layer's sw-description with
#      test keys, checked by the real swupdate for both slots, and six tampered or foreign
#      variants refused;
#   6. the checkers' own tests: each kind of breakage is reported.
# Steps 4 and 5 need systemd-analyze and swupdate/openssl/cpio (tools/setup.sh installs them);
# without them they record a skip (CI fails on skips).
#
#   tools/yocto-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LAYER=yocto/meta-aegis
VENV=.tools/yocto-venv
OELINT_VERSION=9.11.2

t0=$(date +%s%N)
say() { echo "yocto-check: $*"; }
failed=""
fail() {
  failed=1
  echo "yocto-check: FAILED: $*" >&2
  exit 1
}
skip() {
  echo "SKIPPED tools/yocto-check.sh: $*" >&2
  if [ -n "${AEGIS_SKIP_LOG:-}" ]; then echo "tools/yocto-check.sh: $*" >>"$AEGIS_SKIP_LOG"; fi
}
tmp=$(mktemp -d)
cleanup() {
  local rc=$?
  rm -rf "$tmp"
  # A command that failed under `set -e` rather than through fail(): say so all the same.
  [ "$rc" -eq 0 ] || [ -n "$failed" ] || echo "yocto-check: FAILED (exit $rc)" >&2
}
trap cleanup EXIT

# shellcheck source=tools/pinned-venv.sh
source tools/pinned-venv.sh
pinned_venv yocto-tools "$VENV" tools/yocto/requirements.txt .tools/yocto-wheels
"$VENV/bin/oelint-adv" --version | grep -qx "oelint-adv $OELINT_VERSION" ||
  fail "$VENV/bin/oelint-adv reports $("$VENV/bin/oelint-adv" --version), not $OELINT_VERSION"

# 1. Lint. .bbappend files are only linted when named, so every file is named.
mapfile -t recipes < <(cd "$LAYER" && find . -name '*.bb' -o -name '*.bbappend' | sort)
oelint="$PWD/$VENV/bin/oelint-adv"
(cd "$LAYER" && OELINT_CONFIG=.oelint.cfg "$oelint" --quiet --relpaths conf/layer.conf "${recipes[@]}") \
  >"$tmp/oelint.log" 2>&1 ||
  { cat "$tmp/oelint.log" >&2; fail "oelint-adv"; }
[ ! -s "$tmp/oelint.log" ] || { cat "$tmp/oelint.log" >&2; fail "oelint-adv reported findings"; }
say "oelint-adv $OELINT_VERSION: conf/layer.conf and ${#recipes[@]} recipes and appends clean"

# The kas build files, against kas's own configuration schema (unknown keys refused, commits
# must be full hashes).
for f in "$LAYER"/kas/*.yml; do
  "$VENV/bin/python" - "$f" <<'PY' || fail "$f is not a valid kas configuration"
import re, sys, jsonschema, yaml
from kas.configschema import CONFIGSCHEMA
config = yaml.safe_load(open(sys.argv[1]))
try:
    jsonschema.validate(config, CONFIGSCHEMA)
except jsonschema.ValidationError as e:
    sys.exit(f"{sys.argv[1]}: {e.message} (at {'/'.join(map(str, e.absolute_path))})")
for name, repo in config.get("repos", {}).items():
    if "commit" in repo and not re.fullmatch(r"[0-9a-f]{40}", repo["commit"]):
        sys.exit(f"{sys.argv[1]}: repos/{name}: commit {repo['commit']} is not a full hash")
PY
done
say "kas: $(find "$LAYER/kas" -name '*.yml' | wc -l) configuration(s) valid for kas $("$VENV/bin/kas" --version | cut -d' ' -f2)"

# 2. The crate list.
python3 tools/yocto-crates.py --check || fail "aegis-crates.inc is out of date (run tools/yocto-crates.py)"

# 3. Files, checksums, pins.
python3 tools/yocto/check_layer.py >"$tmp/layer.out" || fail "tools/yocto/check_layer.py"
while read -r kind path; do
  [ "$kind" = pending: ] || continue
  skip "the agent recipe installs \${S}/$path, which this checkout does not have yet"
done <"$tmp/layer.out"
grep -v '^pending: ' "$tmp/layer.out" || true

# 4. The data partition units, and the drop-ins on stand-ins for the units they extend (the
# agent's own unit is checked where it is written).
if command -v systemd-analyze >/dev/null 2>&1; then
  files="$LAYER/recipes-aegis/aegis-system/files"
  units="$tmp/units"
  mkdir -p "$units/aegis.service.d" "$units/nv_update_verifier.service.d"
  sh "$files/render-units.sh" UDA /lib/systemd "$files" "$units"
  for stub in aegis nv_update_verifier; do
    printf '[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n' >"$units/$stub.service"
  done
  cp "$files/aegis-data.conf" "$units/aegis.service.d/"
  # The image's /usr/bin/aegis is not here: its stand-in for verify (which checks that the
  # ExecCondition command exists) is /bin/true.
  sed 's|/usr/bin/aegis |/bin/true |' "$files/nv-update-verifier-aegis.conf" \
    >"$units/nv_update_verifier.service.d/aegis.conf"
  grep -q '^ExecCondition=/bin/true firmware boot-check' "$units/nv_update_verifier.service.d/aegis.conf" \
    || fail "the verifier drop-in's ExecCondition moved (aegis firmware boot-check)"
  (cd "$units" && SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no ./*.service ./*.mount) \
    >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify (aegis-system units)"; }
  [ ! -s "$tmp/verify.log" ] || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify warned (aegis-system units)"; }
  say "aegis-system: 5 units and 2 drop-ins pass systemd-analyze verify"
else
  skip "no systemd-analyze (apt-get install systemd): aegis-system's units not verified"
fi

# 5. The signed update.
rc=0
python3 tools/yocto/swu_check.py || rc=$?
case $rc in
  0) ;;
  77) skip "swupdate, openssl or cpio missing (tools/setup.sh): the sw-description was not checked" ;;
  *) fail "tools/yocto/swu_check.py" ;;
esac

# 6. The checkers fail when they must.
python3 -m unittest -q tools/yocto/test_yocto_crates.py tools/yocto/test_check_layer.py 2>"$tmp/unittest.log" ||
  { cat "$tmp/unittest.log" >&2; fail "the checkers' own tests"; }
say "the checkers' own tests pass ($(grep -o 'Ran [0-9]* tests' "$tmp/unittest.log"))"

say "all checks passed in $((($(date +%s%N) - t0) / 1000000)) ms"
