# Aegis Edge updates are CMS-signed: SWUpdate refuses any .swu whose sw-description is not
# signed by a certificate that chains to the CA installed as /usr/share/swupdate/swupdate.pem
# (the swupdate-machine-config append in dynamic-layers/tegrademo), and any artifact whose
# sha256 differs from the signed sw-description's.
FILESEXTRAPATHS:prepend := "${THISDIR}/${BPN}:"
SRC_URI += "file://aegis-signing.cfg"
