#!/usr/bin/env bash
# Checks the container definition and the Helm chart of `chimera serve` (deploy/) without a
# cluster and without a container engine, with the pinned tools of tools/fetch-deploy-tools.sh:
#   1. hadolint on deploy/Containerfile;
#   2. values.schema.json against its metaschema, and the default values.yaml against it;
#   3. for the defaults and each deploy/helm/test-values/good/*.yaml: `helm lint --strict`,
#      `helm template` for the oldest and the newest Kubernetes the chart is validated for,
#      `kubernetes-validate --strict` on what it rendered (the API server's OpenAPI schemas of
#      that version, unknown fields refused), tools/deploy/check_rendered.py (the chart's own
#      promises: no Secret, non-root, read-only root, every serve.yaml path on a mount, …),
#      and the NOTES rendered;
#   4. each deploy/helm/test-values/bad/*.yaml must fail rendering with the message its first
#      line names (`# expect: …`): SQLite with 2 replicas, a root key, a database URL in
#      values, …;
#   5. the serve.yaml rendered for SQLite, its /etc/chimera and /var/lib/chimera moved into a
#      temp dir and filled with files the real CLI makes, starts the real `chimera serve`
#      ($CHIMERA_BIN, default target/debug/chimera): /healthz answers, the registry and the
#      token file were read. Without the binary this part records a skip (CI fails on skips).
# What it cannot show: that the image builds (no registry to pull base images from here), and
# that a cluster runs the chart (no cluster); docs/chimera-serve.md says what was validated.
#
#   tools/deploy-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The chart's floor (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate has.
KUBE_VERSIONS=(1.25.0 1.37.0)
CHART=deploy/helm/chimera
VALUES=deploy/helm/test-values
T=.tools/deploy-venv/bin

t0=$(date +%s%N)
say() { echo "deploy-check: $*"; }
failed=""
fail() {
  failed=1
  echo "deploy-check: FAILED: $*" >&2
  exit 1
}

tools/fetch-deploy-tools.sh
tmp=$(mktemp -d)
server=""
cleanup() {
  local rc=$?
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  # A command that failed under `set -e` rather than through fail(): say so all the same.
  [ "$rc" -eq 0 ] || [ -n "$failed" ] || echo "deploy-check: FAILED (exit $rc)" >&2
}
trap cleanup EXIT

"$T/hadolint" deploy/Containerfile || fail "hadolint: deploy/Containerfile"
say "Containerfile: hadolint clean"

"$T/check-jsonschema" -q --check-metaschema "$CHART/values.schema.json" ||
  fail "values.schema.json is not a valid JSON Schema"
"$T/check-jsonschema" -q --schemafile "$CHART/values.schema.json" "$CHART/values.yaml" ||
  fail "values.yaml does not meet values.schema.json"
say "values.schema.json: valid, values.yaml meets it"

# name | values file (empty: defaults) | replicas | database kind
GOOD=("default||2|postgres")
for f in "$VALUES"/good/*.yaml; do
  n=$(basename "$f" .yaml)
  r=$(sed -n 's/^replicas: *//p' "$f")
  d=$(sed -n 's/^  kind: *//p' "$f")
  GOOD+=("$n|$f|${r:-2}|${d:-postgres}")
done

# The NOTES are rendered through a copy of the chart whose extra template feeds NOTES.txt to
# `tpl` (helm template skips NOTES.txt, and only `helm install` would show a mistake in it).
notes_chart="$tmp/notes/chimera"
mkdir -p "$(dirname "$notes_chart")"
cp -r "$CHART" "$notes_chart"
cp "$notes_chart/templates/NOTES.txt" "$notes_chart/notes.txt"
printf '%s\n' 'notes: |' '  {{- tpl (.Files.Get "notes.txt") . | nindent 2 }}' \
  >"$notes_chart/templates/notes-check.yaml"

for entry in "${GOOD[@]}"; do
  IFS='|' read -r name file replicas db <<<"$entry"
  vals=()
  [ -n "$file" ] && vals=(-f "$file")
  "$T/helm" lint --strict --quiet "$CHART" "${vals[@]}" >"$tmp/lint.log" 2>&1 ||
    { cat "$tmp/lint.log" >&2; fail "helm lint --strict ($name)"; }
  for kv in "${KUBE_VERSIONS[@]}"; do
    out="$tmp/$name-$kv.yaml"
    "$T/helm" template chimera "$CHART" --namespace fleet --kube-version "$kv" "${vals[@]}" >"$out" ||
      fail "helm template ($name, Kubernetes $kv)"
    "$T/kubernetes-validate" --strict --quiet -k "$kv" "$out" ||
      fail "kubernetes-validate --strict -k $kv ($name)"
  done
  "$T/python" tools/deploy/check_rendered.py "$out" --replicas "$replicas" --database "$db" \
    --serve-yaml-out "$tmp/$name.serve.yaml" || fail "check_rendered ($name)"
  "$T/helm" template chimera "$notes_chart" --show-only templates/notes-check.yaml "${vals[@]}" \
    >/dev/null || fail "NOTES.txt does not render ($name)"
  say "$name: lint --strict, rendered and valid for Kubernetes ${KUBE_VERSIONS[*]}" \
    "($(grep -c '^kind:' "$out") objects, $replicas replica(s), $db)"
done

for f in "$VALUES"/bad/*.yaml; do
  want=$(sed -n '1s/^# expect: //p' "$f")
  [ -n "$want" ] || fail "$f: its first line must be '# expect: MESSAGE'"
  if "$T/helm" template chimera "$CHART" -f "$f" >/dev/null 2>"$tmp/err"; then
    fail "$f rendered, but must be refused ($want)"
  fi
  grep -qF -- "$want" "$tmp/err" ||
    { cat "$tmp/err" >&2; fail "$f was refused, but not with: $want"; }
  say "refused as it must be: $(basename "$f" .yaml) ($want)"
done

# 5. The rendered SQLite serve.yaml, run by the real service.
chimera=${CHIMERA_BIN:-${CARGO_TARGET_DIR:-target}/debug/chimera}
# Absolute: the smoke runs it from its own directories.
[[ "$chimera" = /* ]] || chimera="$PWD/$chimera"
if [ ! -x "$chimera" ]; then
  why="tools/deploy-check.sh serve_yaml_smoke: no $chimera (cargo build -p aegis-ota --bin chimera)"
  echo "SKIPPED $why" >&2
  [ -n "${AEGIS_SKIP_LOG:-}" ] && echo "$why" >>"$AEGIS_SKIP_LOG"
else
  s="$tmp/smoke"
  mkdir -p "$s/etc/registry" "$s/etc/trust" "$s/etc/tokens" "$s/data" "$s/work"
  (
    cd "$s/work"
    "$chimera" root init --dir root
    "$chimera" keygen --out gw
    "$chimera" keygen --out cam-1
    "$chimera" enroll cam-1 cam-1.pub --group lobby --registry ../etc/registry/devices.json
    "$chimera" trust add-issuer --trust root/trust.json --name gw-1 --key gw.pub \
      --devices '*' --groups '*'
    "$chimera" root sign-trust --trust root/trust.json --key root/root.key \
      --out ../etc/trust/trust.signed.json
    cp root/root.pub ../etc/trust/root.pub
  ) >"$s/setup.log" 2>&1 || { cat "$s/setup.log" >&2; fail "smoke: setting up with the CLI"; }
  token="chimera_$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  printf -- '- {name: ci, role: viewer, sha256: %s}\n' \
    "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$s/etc/tokens/tokens.yaml"
  # The chart's layout, rooted in the temp dir; a free loopback port instead of 0.0.0.0:8080;
  # no broker (the values' cluster host name resolves nowhere here, and what is checked is
  # that the files the chart mounts are where serve.yaml says).
  sed -e "s#/etc/chimera/#$s/etc/#g" -e "s#/var/lib/chimera/#$s/data/#g" \
    -e 's#^listen: .*#listen: 127.0.0.1:0#' -e '/^broker: /d' \
    "$tmp/sqlite-single.serve.yaml" >"$s/etc/serve.yaml"
  grep -q '^tokens: ' "$s/etc/serve.yaml" || fail "smoke: the SQLite serve.yaml has no tokens file"
  # The log exists before the service starts writing it (the background job opens it
  # itself, maybe after the loop's first read).
  : >"$s/serve.log"
  "$chimera" serve --config "$s/etc/serve.yaml" >>"$s/serve.log" 2>&1 &
  server=$!
  addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's#^chimera serve: listening on http://##p' "$s/serve.log")
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$s/serve.log" >&2; fail "smoke: chimera serve did not start on the chart's serve.yaml"; }
  [ "$(curl -fsS "http://$addr/healthz")" = ok ] || fail "smoke: GET /healthz"
  curl -fsS -H "Authorization: Bearer $token" "http://$addr/api/v1/devices" | grep -q '"cam-1"' ||
    fail "smoke: the token file's viewer token did not list the registry's cam-1"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://$addr/api/v1/audit")
  [ "$code" = 403 ] || fail "smoke: a viewer token read the audit log (HTTP $code, expected 403)"
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
  say "the rendered SQLite serve.yaml runs chimera serve: /healthz ok, registry and token file read"
fi

say "all checks passed in $((($(date +%s%N) - t0) / 1000000)) ms"
