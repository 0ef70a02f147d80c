SUMMARY = "ONNX Runtime (CPU) for the Aegis Edge agent, from the pinned PyPI wheel"
DESCRIPTION = "libonnxruntime out of the onnxruntime 1.32.0 manylinux aarch64 wheel that \
               tools/fetch-models.sh pins (same file, same SHA-256), installed where the \
               agent's inference.runtime expects it. CPU execution provider only: no layer \
               provides an ONNX Runtime with the CUDA and TensorRT providers for \
               scarthgap/JetPack 6 (README.md)."
HOMEPAGE = "https://onnxruntime.ai"
SECTION = "libs"
CVE_PRODUCT = "onnxruntime"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${WORKDIR}/ort/onnxruntime/LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d"

# A wheel is a zip file: downloadfilename makes BitBake unzip it (into ${WORKDIR}/ort).
SRC_URI = "https://files.pythonhosted.org/packages/4a/8f/1e43fb994513c7c7a9c6965272ef89d963c1bd4080993a6267bf913701d1/onnxruntime-${PV}-cp312-cp312-manylinux_2_28_aarch64.whl;downloadfilename=onnxruntime-${PV}-cp312-cp312-manylinux_2_28_aarch64.whl.zip;subdir=ort"
SRC_URI[sha256sum] = "e36c187006e7a7c8b8d6d57f1a209dd63f52430dca6c282b177718ad6b841054"

# The library inside, as tools/fetch-models.sh pins it for aarch64.
AEGIS_ORT_SHA256 = "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a"

COMPATIBLE_HOST = "aarch64.*-linux"
S = "${WORKDIR}/ort/onnxruntime/capi"

do_configure[noexec] = "1"

do_compile() {
    echo "${AEGIS_ORT_SHA256}  ${S}/libonnxruntime.so.${PV}" | sha256sum -c --quiet - ||
        bbfatal "libonnxruntime.so.${PV} in the onnxruntime ${PV} wheel is not the file tools/fetch-models.sh pins"
}

do_install() {
    # /usr/lib/aegis: the agent's default inference.runtime, out of the linker's search path
    # (nothing links to it; the agent opens it by path).
    install -d ${D}${libdir}/aegis
    install -m 0755 ${S}/libonnxruntime.so.${PV} ${S}/libonnxruntime_providers_shared.so ${D}${libdir}/aegis/
    ln -s libonnxruntime.so.${PV} ${D}${libdir}/aegis/libonnxruntime.so
}

FILES:${PN} += "${libdir}/aegis"
# nooelint: oelint.vars.insaneskip - a prebuilt, stripped library; the unversioned name is the path the agent opens
INSANE_SKIP:${PN} = "already-stripped dev-so"
