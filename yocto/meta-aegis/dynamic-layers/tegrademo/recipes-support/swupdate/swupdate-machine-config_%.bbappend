# SWUpdate on the device verifies .swu signatures against the Aegis Edge update CA: installed as
# /usr/share/swupdate/swupdate.pem (where tegra-demo-distro's swupdate-genconfig looks for it)
# and named in the generated swupdate.cfg, with the codeSigning purpose required of signers.

# The CA certificate (PEM): public, but the product's own, so it comes from the build
# configuration (local.conf, CI), never from this layer.
AEGIS_SWUPDATE_CA_CERT ??= ""
do_install[file-checksums] += "${@'${AEGIS_SWUPDATE_CA_CERT}:True' if d.getVar('AEGIS_SWUPDATE_CA_CERT') else ''}"

do_compile:append() {
    sed -i -e '/^[[:space:]]*select[[:space:]]*=/a\\tpublic-key-file = "${datadir}/swupdate/swupdate.pem";\n\tcert-purpose = "codeSigning";' \
        ${B}/swupdate.cfg.in
    grep -q '^[[:space:]]*public-key-file = ' ${B}/swupdate.cfg.in ||
        bbfatal "swupdate.cfg.in has no 'select =' line to add the public key after"
}

do_install:append() {
    [ -n "${AEGIS_SWUPDATE_CA_CERT}" ] ||
        bbfatal "set AEGIS_SWUPDATE_CA_CERT to the update CA certificate (PEM) the device trusts"
    install -m 0644 ${AEGIS_SWUPDATE_CA_CERT} ${D}${datadir}/swupdate/swupdate.pem
}
