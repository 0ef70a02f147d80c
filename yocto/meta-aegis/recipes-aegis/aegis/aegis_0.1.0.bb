SUMMARY = "Aegis Edge agent: the aegis binary, its service and default configuration"
DESCRIPTION = "The Aegis Edge video analytics agent (Rust workspace, package aegis-agent) \
               for NVIDIA Jetson Orin: decode with libav*, CUDA/NVRTC kernels, ONNX Runtime \
               inference, signed workflows over MQTT. Runs as the aegis user under systemd."
HOMEPAGE = "https://example.invalid/aegis-edge"
SECTION = "multimedia"
# The workspace's licence (Cargo.toml [workspace.package]). The ~400 crates linked in carry their
# own (MIT/Apache-2.0/BSD/ISC/Unicode...): README.md, "Licences".
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=11;endline=11;md5=2507bd5f0713f05419cd2f22fa06fe62"

# The source is the checkout this layer lives in (AEGIS_TOPDIR, conf/layer.conf): the crate list
# below is generated from its Cargo.lock, so the two cannot drift apart. externalsrc still
# fetches the crate:// entries; it only replaces the source fetch.
inherit externalsrc
EXTERNALSRC = "${AEGIS_TOPDIR}"
# No oe-workdir/oe-logs links inside the checkout.
EXTERNALSRC_SYMLINKS = ""

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# Only the agent: `chimera` (publisher CLI, gateway service) runs on operators' machines and
# servers, never on the device, and would add the PostgreSQL/OIDC/PKCS#11 crates to the build.
CARGO_BUILD_FLAGS += "-p aegis-agent --bin aegis"

# `bitbake -c update_crates aegis` would walk the whole checkout, git-ignored lock files included
# (ota/fuzz/Cargo.lock); give it the workspace's lock file alone, so that it writes what
# tools/yocto-crates.py writes.
CARGO_LOCK_SRC_DIR = "${WORKDIR}/workspace-lock"
do_update_crates[prefuncs] += "aegis_workspace_lock"
aegis_workspace_lock[doc] = "Copies the workspace's Cargo.lock alone for do_update_crates"
aegis_workspace_lock() {
    mkdir -p ${CARGO_LOCK_SRC_DIR}
    cp ${S}/Cargo.lock ${CARGO_LOCK_SRC_DIR}/
}

# ffmpeg-next links libavcodec/-format/-device/-util and libswscale (shared, from oe-core's
# ffmpeg). ffmpeg-sys-next generates its bindings with bindgen, which needs libclang
# (clang-native, meta-clang) and the target's headers; it also compiles a small version probe
# for the build host, which must see the target's libav* headers but the host's C library: the
# FFMPEG_DIR prefix below holds only the libav* header directories.
# openssl: the WebRTC outputs' DTLS (str0m's OpenSSL backend, openssl-sys through
# pkg-config).
DEPENDS += "clang-native ffmpeg openssl"
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"
export BINDGEN_EXTRA_CLANG_ARGS = "${HOST_CC_ARCH}${TOOLCHAIN_OPTIONS} --target=${TARGET_SYS}"
export FFMPEG_DIR = "${WORKDIR}/ffmpeg-prefix"
do_compile[prefuncs] += "aegis_ffmpeg_prefix"
aegis_ffmpeg_prefix[doc] = "Makes FFMPEG_DIR: the target's libav* headers alone, and its libdir"
aegis_ffmpeg_prefix() {
    rm -rf ${FFMPEG_DIR}
    mkdir -p ${FFMPEG_DIR}/include
    for dir in ${STAGING_INCDIR}/libav* ${STAGING_INCDIR}/libsw*; do
        ln -s "$dir" ${FFMPEG_DIR}/include/
    done
    ln -s ${STAGING_LIBDIR} ${FFMPEG_DIR}/lib
}

do_install:append() {
    # deploy/: the unit and the default configuration, kept with the code they describe.
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/deploy/systemd/aegis.service ${S}/deploy/systemd/aegis-firmware.service \
        ${S}/deploy/systemd/aegis-firmware.path ${D}${systemd_system_unitdir}/
    install -d ${D}${sysconfdir}/aegis
    install -m 0644 ${S}/deploy/aegis.yaml ${D}${sysconfdir}/aegis/aegis.yaml
    # /var/lib/aegis (store, workflows, keys, models, recordings) is made at boot, on the data
    # partition aegis-system mounts there: an image cannot carry it.
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${WORKDIR}/aegis.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/aegis.conf
}

SRC_URI += "file://aegis.tmpfiles"

# The agent's own account: video for /dev/video* and the Jetson's /dev/nv* nodes (NVIDIA's
# 99-tegra-devices.rules give them to that group).
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/aegis --no-create-home \
                       --shell ${base_sbindir}/nologin --user-group --groups video aegis"

SYSTEMD_SERVICE:${PN} = "aegis.service aegis-firmware.path"
CONFFILES:${PN} = "${sysconfdir}/aegis/aegis.yaml"
FILES:${PN} += "${nonarch_libdir}/tmpfiles.d/aegis.conf"

# Loaded at run time (dlopen), so no shared-library dependency records them: the factory
# models and an ONNX Runtime at the configured inference.runtime (/usr/lib/aegis).
RRECOMMENDS:${PN} += "aegis-models aegis-onnxruntime"
