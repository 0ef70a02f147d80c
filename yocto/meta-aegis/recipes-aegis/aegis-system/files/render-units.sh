#!/bin/sh
# Writes aegis-system's unit files for one data partition (aegis-system_*.bb runs it in
# do_compile; tools/yocto-check.sh runs it to check the result with systemd-analyze verify).
#
#   render-units.sh PARTLABEL SYSTEMD_UNITDIR SRCDIR OUTDIR
set -eu
label=$1 unitdir=$2 src=$3 out=$4
# Plain labels only: then the device unit's name needs no escaping beyond by-partlabel's dash.
if ! printf '%s\n' "$label" | grep -Eq '^[A-Za-z0-9_]+$'; then
    echo "render-units.sh: the data partition label must be letters, digits and _ only: '$label'" >&2
    exit 1
fi
# \x2d is systemd's escape of the dash; the doubled backslash is sed's.
escaped="dev-disk-by\\\\x2dpartlabel-$label"
for unit in aegis-data-mkfs.service aegis-data-prepare.service data.mount etc-aegis.mount var-lib-aegis.mount; do
    sed -e "s#@DATA_DEVICE@#/dev/disk/by-partlabel/$label#g" \
        -e "s#@DATA_DEVICE_UNIT@#$escaped.device#g" \
        -e "s#@DATA_DEVICE_ESCAPED@#$escaped#g" \
        -e "s#@SYSTEMD_UNITDIR@#$unitdir#g" \
        "$src/$unit" >"$out/$unit"
done
