SUMMARY = "Aegis Edge appliance: persistent data partition and A/B boot policy"
DESCRIPTION = "Mounts the data partition (outside the A/B root file systems) at /data, \
               formatting it on first boot; binds /data/aegis to /var/lib/aegis (store, \
               workflows, keys, models, recordings); lays the device's own /etc/aegis files \
               (aegis.yaml with its identity, trust.json) over the image's /etc/aegis; keeps \
               the agent from running without them; and lets meta-tegra's nv_update_verifier \
               mark the booted slot good only once the agent runs."
HOMEPAGE = "https://example.invalid/aegis-edge"
SECTION = "base"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the units are this project's own files, under its licence
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = " \
    file://aegis-data-mkfs.service \
    file://aegis-data-prepare.service \
    file://aegis-data.conf \
    file://data.mount \
    file://etc-aegis.mount \
    file://nv-update-verifier-aegis.conf \
    file://render-units.sh \
    file://var-lib-aegis.mount \
"

# The GPT label of the data partition. NVIDIA's Orin layouts end with a small "UDA" partition;
# a product layout makes it large enough for recordings and models (README.md).
AEGIS_DATA_PARTLABEL ?= "UDA"

S = "${WORKDIR}"

inherit systemd

do_configure[noexec] = "1"

B = "${WORKDIR}/units"

do_compile() {
    # The same script renders the units for tools/yocto-check.sh's systemd-analyze verify.
    sh ${S}/render-units.sh "${AEGIS_DATA_PARTLABEL}" "${systemd_unitdir}" ${S} ${B}
}

do_install() {
    install -d ${D}${systemd_system_unitdir} ${D}/data
    install -m 0644 ${B}/*.service ${B}/*.mount ${D}${systemd_system_unitdir}/
    install -d ${D}${systemd_system_unitdir}/aegis.service.d ${D}${systemd_system_unitdir}/nv_update_verifier.service.d
    install -m 0644 ${S}/aegis-data.conf ${D}${systemd_system_unitdir}/aegis.service.d/
    install -m 0644 ${S}/nv-update-verifier-aegis.conf ${D}${systemd_system_unitdir}/nv_update_verifier.service.d/aegis.conf
}

# The partition layout is the machine's.
PACKAGE_ARCH = "${MACHINE_ARCH}"
SYSTEMD_SERVICE:${PN} = "data.mount var-lib-aegis.mount etc-aegis.mount"
FILES:${PN} += "/data ${systemd_system_unitdir}"
# The aegis user owns /data/aegis; mke2fs and e2fsck format and check the partition.
RDEPENDS:${PN} = "aegis e2fsprogs-e2fsck e2fsprogs-mke2fs"
