SUMMARY = "Aegis Edge factory models (ONNX): selfie segmentation and NudeNet 320n"
DESCRIPTION = "The models tools/fetch-models.sh fetches, from the same pinned PyPI wheels \
               with the same SHA-256 checks: NudeNet's 320n.onnx as the nudenet wheel ships \
               it, and MediaPipe's selfie_segmentation.tflite converted to ONNX by \
               tools/models/selfie_tflite2onnx.py with the converter's pinned packages. \
               Installed read-only under /usr/share/aegis/models: the factory default, which \
               comes and goes with the root file system (and so with the agent it was \
               released with); models delivered over the air live on the data partition."
HOMEPAGE = "https://example.invalid/aegis-edge"
SECTION = "multimedia"
# mediapipe: Apache-2.0. nudenet: its wheel's metadata says MIT, but the LICENSE file it ships
# is the AGPL-3.0 text; the stricter one is declared.
LICENSE = "Apache-2.0 & AGPL-3.0-only"
LICENSE:${PN}-selfie = "Apache-2.0"
LICENSE:${PN}-nudenet = "AGPL-3.0-only"
LIC_FILES_CHKSUM = " \
    file://${WORKDIR}/mediapipe/mediapipe-0.10.14.dist-info/LICENSE;md5=87a30e5cfa12d1ab9ada4fb6f3feed4b \
    file://${WORKDIR}/nudenet/nudenet-3.4.2.dist-info/LICENSE;md5=4ae09d45eac4aa08d013b5f2e01c67f6 \
"

inherit allarch python3native

# Wheels are zip files: downloadfilename (the wheel's name plus .zip) makes BitBake unzip them.
PYPI_FILES = "https://files.pythonhosted.org/packages"
# The packages that ship the models (tools/fetch-models.sh, MODELS).
# nooelint: oelint.vars.downloadfilename - each name is the wheel's own, with its package's version
SRC_URI = " \
    ${PYPI_FILES}/2f/ee/2e9e730dc4d98c8a9541b57bad173bebddf0e4c78f179acc100248c58066/mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl;downloadfilename=mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl.zip;subdir=mediapipe;name=mediapipe \
    ${PYPI_FILES}/1c/ee/1aa02d44ba958cc77e16ff1e41a0aac5e721037db7bf62b9c9d124917f87/nudenet-3.4.2-py3-none-any.whl;downloadfilename=nudenet-3.4.2-py3-none-any.whl.zip;subdir=nudenet;name=nudenet \
"
# The converter and its packages (tools/fetch-models.sh, CONVERT_REQS) for python3-native
# (CPython 3.12) on an x86_64 build host, unzipped into one import path.
# nooelint: oelint.vars.downloadfilename - each name is the wheel's own, with its package's version
SRC_URI += " \
    file://${AEGIS_TOPDIR}/tools/models/selfie_tflite2onnx.py \
    ${PYPI_FILES}/db/9b/f35d52989cb458a911f1ed4164b37dcf6559237b73c962c09ed0b6cecd4f/tflite-2.18.0-py2.py3-none-any.whl;downloadfilename=tflite-2.18.0-py2.py3-none-any.whl.zip;subdir=convert-site;name=tflite \
    ${PYPI_FILES}/87/56/21509a657f9a73ab0ca307d325043f49ca6c4ff6bf79edeb9e159190d44d/onnx-1.23.2-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl;downloadfilename=onnx-1.23.2-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl.zip;subdir=convert-site;name=onnx \
    ${PYPI_FILES}/99/60/14115e6364fa676c5397c2ad3004e527e9aa487abf5d0706ec81bbd08529/numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl;downloadfilename=numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl.zip;subdir=convert-site;name=numpy \
    ${PYPI_FILES}/e8/2d/d2a548598be01649e2d46231d151a6c56d10b964d94043a335ae56ea2d92/flatbuffers-25.12.19-py2.py3-none-any.whl;downloadfilename=flatbuffers-25.12.19-py2.py3-none-any.whl.zip;subdir=convert-site;name=flatbuffers \
    ${PYPI_FILES}/db/f3/3996583dd2906297a637af12114deddf7658af6e683fedb83be061983fb5/protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl;downloadfilename=protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl.zip;subdir=convert-site;name=protobuf \
    ${PYPI_FILES}/c7/f9/7d76c1eae866f5d4636401b31b6d6dd90e4b4ced1fa7cfdfcca9c60e4bd3/ml_dtypes-0.6.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl;downloadfilename=ml_dtypes-0.6.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl.zip;subdir=convert-site;name=ml-dtypes \
    ${PYPI_FILES}/49/d3/b8441a820a491ddfc024b0b0cf0393375b75ea13866d9c66727e54c2fc80/typing_extensions-4.16.0-py3-none-any.whl;downloadfilename=typing_extensions-4.16.0-py3-none-any.whl.zip;subdir=convert-site;name=typing-extensions \
"
SRC_URI[mediapipe.sha256sum] = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
SRC_URI[nudenet.sha256sum] = "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"
SRC_URI[tflite.sha256sum] = "a49a4316530377c597bb272176c12d5d3c4453640118b068c93a8c3cc6c5c2c1"
SRC_URI[onnx.sha256sum] = "7abf381d278f31ac62487fddedc9dd42da842dce94d5d43536836ee3efdf4a2b"
SRC_URI[numpy.sha256sum] = "90f9849678c75fe7afa2d348ac842c168b0a4d3d61919687216dfc547976d853"
SRC_URI[flatbuffers.sha256sum] = "7634f50c427838bb021c2d66a3d1168e9d199b0607e6329399f04846d42e20b4"
SRC_URI[protobuf.sha256sum] = "89f23aa53c24553a2416fd4fd1ec06f74fa42b14b546d8883128813f775bbfd2"
SRC_URI[ml-dtypes.sha256sum] = "3b4a480aa8fd54a1805b8ac10f3f91763926a74f73c0c364c10f9231854f4170"
SRC_URI[typing-extensions.sha256sum] = "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8"

# The files, as tools/fetch-models.sh pins them (tools/yocto-check.sh compares the two).
AEGIS_SELFIE_TFLITE_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
AEGIS_NUDENET_SHA256 = "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
AEGIS_SELFIE_ONNX_SHA256 = "4e358553387640443f03452dc4c7f10fbedc62ecd505e21d9c151b58894bda3b"

S = "${WORKDIR}"
B = "${WORKDIR}/build"

do_configure[noexec] = "1"

aegis_models_verify[doc] = "aegis_models_verify FILE SHA256: stops the build unless FILE has that SHA-256"
aegis_models_verify() {
    echo "$2  $1" | sha256sum -c --quiet - ||
        bbfatal "$(basename $1) is not the file tools/fetch-models.sh pins (sha256 $2)"
}

do_compile() {
    [ "$(uname -m)" = x86_64 ] ||
        bbfatal "the converter's pinned wheels are x86_64 ones; this build host is $(uname -m)"
    ${PYTHON} -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' ||
        bbfatal "the converter's pinned wheels are for CPython 3.12, python3-native is $(${PYTHON} --version)"
    cp ${WORKDIR}/nudenet/nudenet/320n.onnx ${B}/nudenet-320n.onnx
    aegis_models_verify ${B}/nudenet-320n.onnx ${AEGIS_NUDENET_SHA256}
    cp ${WORKDIR}/mediapipe/mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite ${B}/
    aegis_models_verify ${B}/selfie_segmentation.tflite ${AEGIS_SELFIE_TFLITE_SHA256}
    PYTHONPATH=${WORKDIR}/convert-site ${PYTHON} ${WORKDIR}/selfie_tflite2onnx.py \
        ${B}/selfie_segmentation.tflite ${B}/selfie_segmentation.onnx
    aegis_models_verify ${B}/selfie_segmentation.onnx ${AEGIS_SELFIE_ONNX_SHA256}
}

do_install() {
    install -d ${D}${datadir}/aegis/models
    install -m 0644 ${B}/selfie_segmentation.onnx ${B}/nudenet-320n.onnx ${D}${datadir}/aegis/models/
}

# One package per model, so that a product drops one (say the AGPL-3.0 NudeNet) by name.
PACKAGES =+ "${PN}-selfie ${PN}-nudenet"
FILES:${PN}-selfie += "${datadir}/aegis/models/selfie_segmentation.onnx"
FILES:${PN}-nudenet += "${datadir}/aegis/models/nudenet-320n.onnx"
ALLOW_EMPTY:${PN} = "1"
RDEPENDS:${PN} = "${PN}-nudenet ${PN}-selfie"
