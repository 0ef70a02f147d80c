# nooelint: oelint.file.underscores,oelint.var.mandatoryvar.SRC_URI - an image (no version); SRC_URI is the required recipe's
SUMMARY = "Signed A/B update (.swu) of aegis-image for Jetson Orin"
DESCRIPTION = "tegra-demo-distro's SWUpdate image for Tegra (root file system, kernel, \
               device tree, bootloader capsule, ESP) built from aegis-image, with this \
               layer's sw-description: every artifact hashed, the description CMS-signed \
               with SWUPDATE_CMS_CERT and SWUPDATE_CMS_KEY, which the build configuration \
               provides (README.md)."
HOMEPAGE = "https://example.invalid/aegis-edge"
SECTION = "images"
LICENSE = "MIT"

# nooelint: oelint.file.requirenotfound - tegra-demo-distro's meta-tegrademo (its meta-swupdate dynamic layer), on BBPATH
require dynamic-layers/meta-swupdate/recipes-demo/images/swupdate-image-tegra.bb

SWUPDATE_CORE_IMAGE_NAME = "aegis-image"
SWUPDATE_SIGNING = "CMS"
SWUPDATE_CMS_MD = "sha256"
