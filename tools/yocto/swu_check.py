#!/usr/bin/env python3
"""Builds a signed .swu from the layer's sw-description the way meta-swupdate does (BitBake
variables filled in, $swupdate_get_sha256() replaced, `openssl cms -sign` with its flags, a
`cpio -H crc` archive) out of stand-in artifacts and test keys, and checks it with the real
`swupdate -c` (Debian's, CMS-enabled): both slot selections must verify and pass, and each
tampered or foreign variant must be refused before anything is installed. tools/yocto-check.sh
runs it.

    swu_check.py [--template FILE]     exit 0: all as expected; 1: a check failed;
                                       77: swupdate, openssl or cpio is missing

What it cannot show: the installation itself (partitions, the Lua script's slot switch) — that
needs a Jetson.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (
    ROOT / "yocto/meta-aegis/dynamic-layers/tegrademo/recipes-aegis/images/aegis-update-image/sw-description"
)
MACHINE = "jetson-orin-nano-devkit-nvme"
# The variables the template may use, with values like those tegra-demo-distro's
# swupdate-image-tegra.bb (scarthgap) and the machine give them. A placeholder not listed here
# is an error: BitBake would replace it with nothing (and only warn).
VARIABLES = {
    "DISTRO_VERSION": "5.0.19+test",
    "MACHINE": MACHINE,
    "SWUPDATE_CORE_IMAGE_NAME": "aegis-image",
    "ROOTFS_DEVICE_PATH": "/dev/disk/by-partlabel",
    "ROOTFS_FILENAME": f"aegis-image-{MACHINE}.rootfs.tar.gz",
    "DEPLOY_KERNEL_IMAGE": "Image",
    "DTBFILE": "tegra234-p3768-0000+p3767-0005-nv-super.dtb",
    "KERNEL_A_PARTNAME": "A_kernel",
    "KERNEL_B_PARTNAME": "B_kernel",
    "KERNEL_A_DTB_PARTNAME": "A_kernel-dtb",
    "KERNEL_B_DTB_PARTNAME": "B_kernel-dtb",
    "ESP_ARCHIVE": f"tegra-espimage-{MACHINE}.tar.gz",
    "TEGRA_SWUPDATE_CAPSULE_INSTALL_PATH": "/boot/efi/EFI/UpdateCapsule/TEGRA_BL.Cap",
    "TEGRA_SWUPDATE_BOOTLOADER_VERSION": "36.5.0",
    "TEGRA_SWUPDATE_BOOTLOADER_INSTALL_ONLY_IF_DIFFERENT": "false",
}
SIGNER_CN = "aegis-update-signer"
# What swupdate logs when an image passed every check (and, in check mode, the dummy install).
ACCEPTED = "SWUPDATE successful !"


class Failed(Exception):
    pass


def run(cmd: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False, **kw)


def must(cmd: list, cwd: Path) -> None:
    p = run(cmd, cwd)
    if p.returncode:
        raise Failed(f"{' '.join(map(str, cmd))}: {p.stderr.strip() or p.stdout.strip()}")


def expand(template: str, artifacts: Path) -> str:
    unknown = sorted(set(re.findall(r"@@(\w+)@@", template)) - VARIABLES.keys())
    if unknown:
        raise Failed(f"sw-description uses {', '.join(unknown)}, which the update image does not define")
    text = re.sub(r"@@(\w+)@@", lambda m: VARIABLES[m[1]], template)

    def sha(m: re.Match) -> str:
        f = artifacts / m[1]
        if not f.is_file():
            raise Failed(f"sw-description hashes {m[1]}, which the update does not carry")
        return hashlib.sha256(f.read_bytes()).hexdigest()

    return re.sub(r"\$swupdate_get_sha256\(([^)]+)\)", sha, text)


def artifacts(d: Path) -> list[str]:
    """Stand-ins for what SWUPDATE_IMAGES puts in the update, in that order."""
    (d / "rootfs").mkdir()
    (d / "rootfs/aegis-release").write_text("stand-in root file system\n")
    names = [
        VARIABLES["ROOTFS_FILENAME"],
        "tegra-bl.cap",
        "Image",
        VARIABLES["DTBFILE"],
        "tegra-swupdate-script.lua",
        VARIABLES["ESP_ARCHIVE"],
    ]
    for archive in (names[0], names[5]):
        with tarfile.open(d / archive, "w:gz") as t:
            t.add(d / "rootfs", arcname=".")
    (d / "tegra-bl.cap").write_bytes(b"capsule" * 64)
    (d / "Image").write_bytes(b"kernel" * 64)
    (d / VARIABLES["DTBFILE"]).write_bytes(b"\xd0\x0d\xfe\xed" + b"dtb" * 32)
    (d / "tegra-swupdate-script.lua").write_text("function postinst()\n  return true, 'stand-in'\nend\n")
    return names


def make_ca(d: Path, name: str) -> None:
    must(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        d,
    )


def make_signer(d: Path, name: str, ca: str, purpose: str) -> None:
    must(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={SIGNER_CN}",
        ],
        d,
    )
    (d / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={purpose}\n"
    )
    must(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        ],
        d,
    )


def pack(
    d: Path, out: str, description: str, signer: str | None, names: list[str], sign_text: str | None = None
):
    """sw-description (+ its CMS signature by `signer`, over `sign_text` if given) and the artifacts."""
    (d / "sw-description").write_text(sign_text if sign_text is not None else description)
    members = ["sw-description"]
    if signer:
        must(
            [
                "openssl",
                "cms",
                "-sign",
                "-in",
                "sw-description",
                "-out",
                "sw-description.sig",
                "-signer",
                f"{signer}.pem",
                "-inkey",
                f"{signer}.key",
                "-outform",
                "DER",
                "-nosmimecap",
                "-binary",
                "-md",
                "sha256",
            ],
            d,
        )
        members.append("sw-description.sig")
    (d / "sw-description").write_text(description)
    listing = ("\n".join(members + names) + "\n").encode()
    with open(d / out, "wb") as f:
        p = subprocess.run(
            ["cpio", "-o", "-H", "crc", "--quiet"],
            cwd=d,
            input=listing,
            stdout=f,
            stderr=subprocess.PIPE,
            check=False,
        )
    if p.returncode:
        raise Failed(f"cpio: {p.stderr.decode().strip()}")


def swupdate(d: Path, swu: str, select: str, hw: str = MACHINE) -> subprocess.CompletedProcess:
    # Its control and progress sockets go to $TMPDIR: this run's own, not /tmp's.
    tmp = d / f"tmp-{swu}-{select}-{hw}"
    tmp.mkdir(exist_ok=True)
    return run(
        [
            "swupdate",
            "-f",
            "swupdate.cfg",
            "-c",
            "-k",
            "ca.pem",
            "--cert-purpose",
            "codeSigning",
            "--forced-signer-name",
            SIGNER_CN,
            "-e",
            f"system,{select}",
            "-H",
            f"{hw}:1.0",
            "-i",
            swu,
            "-l",
            "4",
        ],
        d,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def check(template: Path) -> list[str]:
    for tool in ("swupdate", "openssl", "cpio"):
        if not shutil.which(tool):
            raise SystemExit(77)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "swupdate.cfg").write_text("globals:\n{\n\tverbose = false;\n};\n")
        names = artifacts(d)
        description = expand(template.read_text(), d)
        make_ca(d, "ca")
        make_ca(d, "other-ca")
        make_signer(d, "signer", "ca", "codeSigning")
        make_signer(d, "foreign", "other-ca", "codeSigning")
        make_signer(d, "mail", "ca", "emailProtection")
        pack(d, "good.swu", description, "signer", names)
        pack(d, "unsigned.swu", description, None, names)
        pack(d, "foreign.swu", description, "foreign", names)
        pack(d, "wrong-purpose.swu", description, "mail", names)
        # The signature of the real description, over a description that now writes slot A's
        # kernel partition from slot A (a one-word change).
        pack(
            d,
            "edited.swu",
            description.replace('/B_kernel"', '/A_kernel"', 1),
            "signer",
            names,
            sign_text=description,
        )
        rootfs = d / names[0]
        pristine = rootfs.read_bytes()
        with tarfile.open(rootfs, "w:gz") as t:
            (d / "rootfs/aegis-release").write_text("a root file system someone changed\n")
            t.add(d / "rootfs", arcname=".")
        pack(d, "tampered-rootfs.swu", description, "signer", names)
        rootfs.write_bytes(pristine)

        # Judged by swupdate's log, not its exit status: in check mode, Debian's 2022.12 ends a
        # successful run with a post-update IPC to its own control thread that races with its
        # exit, so a run that verified and passed everything exits 0 or 1 at random. (Its
        # "[endupdate] : SWUpdate was successful" line is no sign either: refused runs print it.)
        out = []
        accepted = lambda log: "Verified OK" in log and ACCEPTED in log and "[ERROR]" not in log  # noqa: E731
        for slot in ("slot_a", "slot_b"):
            # The same races can end a good run early or lose a file it just extracted
            # ("sw-description.sig cannot be opened"): the signed update must be accepted in
            # one of three runs. The refused updates below must be refused in every run
            # that read them.
            for _ in range(3):
                p = swupdate(d, "good.swu", slot)
                if accepted(p.stdout + p.stderr):
                    break
            else:
                out.append(f"the signed update was not accepted for system,{slot}:\n{tail(p)}")
        refused = {
            "unsigned.swu": ("an unsigned update", "slot_a", MACHINE),
            "foreign.swu": ("an update signed under another CA", "slot_a", MACHINE),
            "wrong-purpose.swu": ("an update signed by a certificate without codeSigning", "slot_a", MACHINE),
            "edited.swu": ("an update whose sw-description was edited after signing", "slot_a", MACHINE),
            "tampered-rootfs.swu": ("an update with a changed root file system", "slot_a", MACHINE),
            "good.swu": ("the update on another board", "slot_a", "jetson-agx-orin-devkit"),
        }
        for swu, (what, slot, hw) in refused.items():
            p = swupdate(d, swu, slot, hw)
            log = p.stdout + p.stderr
            # swupdate 2022.12 races (core/pctl.c, core/notifier.c): now and then a run ends,
            # or its output stops, before a verdict — no "SWUPDATE successful" and no error
            # line, at most the notifier's "SWUpdate was successful". Such a run judged
            # nothing; it is run again (at most twice more). Any run that says it accepted
            # fails the check.
            for _ in range(2):
                if unjudged(log):
                    p = swupdate(d, swu, slot, hw)
                    log = p.stdout + p.stderr
            if ACCEPTED in log or "[ERROR]" not in log:
                out.append(f"swupdate accepted {what} ({swu}):\n{tail(p)}")
            elif "Installation in progress" in log and swu != "tampered-rootfs.swu":
                out.append(f"swupdate refused {what} only after starting to install it ({swu}):\n{tail(p)}")
        return out


def unjudged(log: str) -> bool:
    """The run ended (or lost its output) before a verdict: neither accepted nor an error."""
    return ACCEPTED not in log and "[ERROR]" not in log


def tail(p: subprocess.CompletedProcess) -> str:
    return "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--template", type=Path, default=TEMPLATE)
    args = ap.parse_args()
    try:
        problems = check(args.template)
    except Failed as e:
        problems = [str(e)]
    for p in problems:
        print(f"swu_check: {p}", file=sys.stderr)
    if problems:
        return 1
    print(
        "swu_check: signed update verified for system,slot_a and system,slot_b; unsigned, foreign CA, "
        "wrong purpose, edited description, changed rootfs and other board all refused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
