#!/usr/bin/env bash
# Sourced by the scripts that install pinned Python tools into .tools/ (tools/fetch-deploy-tools.sh,
# tools/yocto-check.sh). Not run on its own.
#
#   pinned_venv LABEL VENV REQUIREMENTS CACHE
#
# (Re)creates the virtual environment VENV from REQUIREMENTS, a pip requirements file in which
# every line carries its --hash (pip --require-hashes: a wheel with another checksum is
# refused), wheels only, no dependency resolution (the file lists them all). Nothing is fetched
# when VENV was built from the same file at the same path: the stamp names the venv's own path
# too, because a venv's scripts point at its interpreter by absolute path, so one built by
# another checkout is rebuilt here. Wheels are cached in CACHE, so a rebuild needs no network.
pinned_venv() {
  local label=$1 venv=$2 reqs=$3 cache=$4 pinned
  pinned="$(sha256sum "$reqs" | cut -d' ' -f1) $PWD/$venv"
  [ "$(cat "$venv/.pinned" 2>/dev/null)" = "$pinned" ] && return 0
  echo "$label: creating $venv from $reqs"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  local pip=("$venv/bin/pip" -q --disable-pip-version-check)
  # From the cache when it has every wheel; else download (hashes checked either way).
  if ! "${pip[@]}" install --no-index --find-links "$cache" --require-hashes --no-deps \
    -r "$reqs" 2>/dev/null; then
    "${pip[@]}" download --require-hashes --no-deps --only-binary=:all: -d "$cache" -r "$reqs"
    "${pip[@]}" install --no-index --find-links "$cache" --require-hashes --no-deps -r "$reqs"
  fi
  "$venv/bin/pip" check -q --disable-pip-version-check >/dev/null
  echo "$pinned" >"$venv/.pinned"
}
