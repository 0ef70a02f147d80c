SUMMARY = "Aegis Edge appliance image for Jetson Orin"
DESCRIPTION = "tegra-demo-distro's demo-image-base with the Aegis Edge agent, its factory \
               models, ONNX Runtime, CUDA's driver library and NVRTC (opened at run time; \
               cuda-cudart adds CUDA's library directory to ld.so.conf), \
               the data partition, and SWUpdate for A/B root file system updates \
               (aegis-update-image builds the signed .swu). Needs \
               USE_REDUNDANT_FLASH_LAYOUT = 1, the tegrademo distro's default."
HOMEPAGE = "https://example.invalid/aegis-edge"
SECTION = "images"
LICENSE = "MIT"

# nooelint: oelint.file.requirenotfound - tegra-demo-distro's meta-tegrademo, on BBPATH
require recipes-demo/images/demo-image-base.bb

IMAGE_INSTALL += " \
    aegis \
    aegis-models \
    aegis-onnxruntime \
    aegis-system \
    cuda-cudart \
    cuda-nvrtc \
    swupdate \
    tegra-libraries-cuda \
"

# The update carries the root file system as this tarball.
IMAGE_FSTYPES += "tar.gz"

# The running image's version, which the agent compares firmware orders with
# (workflows.firmware.version_file): MAJOR.MINOR.PATCH, the version a firmware order for the
# next image names. In the root file system, so each A/B slot says its own.
AEGIS_FIRMWARE_VERSION ?= "${DISTRO_VERSION}"

aegis_firmware_version() {
    install -d ${IMAGE_ROOTFS}${nonarch_libdir}/aegis
    echo "${AEGIS_FIRMWARE_VERSION}" > ${IMAGE_ROOTFS}${nonarch_libdir}/aegis/firmware-version
}

aegis_firmware_version[doc] = "Writes the image's firmware version for the agent"
ROOTFS_POSTPROCESS_COMMAND += "aegis_firmware_version;"
