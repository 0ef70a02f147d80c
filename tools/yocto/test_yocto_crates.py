"""Tests of tools/yocto-crates.py (run by tools/yocto-check.sh): the generated crate list must
match Cargo.lock, and every way of getting it wrong must be reported by name."""

import importlib.util
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools/yocto-crates.py"
_spec = importlib.util.spec_from_file_location("yocto_crates", TOOL)
yc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(yc)

LOCK = (ROOT / "Cargo.lock").read_text()
INC = yc.INC.read_text()


def first_crate() -> tuple[str, str, str]:
    return yc.crates(LOCK)[0]


class CrateList(unittest.TestCase):
    def test_the_layer_list_matches_the_workspace_lock(self):
        self.assertEqual(yc.problems(INC, LOCK), [])
        self.assertEqual(INC, yc.render(LOCK))

    def test_every_crates_io_package_has_an_entry_and_its_checksum(self):
        for name, version, checksum in yc.crates(LOCK):
            self.assertIn(f"    crate://crates.io/{name}/{version} \\\n", INC)
            self.assertIn(f'SRC_URI[{name}-{version}.sha256sum] = "{checksum}"\n', INC)

    def test_a_changed_checksum_is_reported_with_both_values(self):
        name, version, checksum = first_crate()
        bad = "0" * 64 if checksum != "0" * 64 else "1" * 64
        inc = INC.replace(f'"{checksum}"', f'"{bad}"', 1)
        self.assertEqual(
            yc.problems(inc, LOCK),
            [f"{name}-{version}: checksum {bad} here, {checksum} in Cargo.lock"],
        )

    def test_a_lock_bump_without_regenerating_is_reported(self):
        name, version, checksum = first_crate()
        lock = LOCK.replace(
            f'name = "{name}"\nversion = "{version}"', f'name = "{name}"\nversion = "{version}9"', 1
        )
        self.assertNotEqual(lock, LOCK)
        found = yc.problems(INC, lock)
        self.assertIn(f"{name}-{version}9: in Cargo.lock, missing from the SRC_URI list", found)
        self.assertIn(f"{name}-{version}: in the SRC_URI list, not in Cargo.lock", found)

    def test_a_crate_without_checksum_line_is_reported(self):
        name, version, checksum = first_crate()
        inc = INC.replace(f'SRC_URI[{name}-{version}.sha256sum] = "{checksum}"\n', "")
        self.assertEqual(
            yc.problems(inc, LOCK), [f"{name}-{version}: no SRC_URI[{name}-{version}.sha256sum]"]
        )

    def test_formatting_drift_is_reported_even_with_the_same_crates(self):
        inc = INC.replace("# from Cargo.lock\n", "# from somewhere\n")
        found = yc.problems(inc, LOCK)
        self.assertEqual(len(found), 1)
        self.assertIn("not the generated text", found[0])

    def test_git_and_foreign_registry_dependencies_are_refused(self):
        git = (
            LOCK
            + '\n[[package]]\nname = "x"\nversion = "1.0.0"\nsource = "git+https://example.invalid/x#abc"\n'
        )
        with self.assertRaisesRegex(yc.LockError, "git dependency x 1.0.0"):
            yc.crates(git)
        other = (
            LOCK
            + '\n[[package]]\nname = "y"\nversion = "1.0.0"\nsource = "registry+https://example.invalid/index"\n'
        )
        with self.assertRaisesRegex(yc.LockError, "only crates.io packages"):
            yc.crates(other)

    def test_check_mode_fails_on_a_copy_with_one_changed_checksum(self):
        name, version, checksum = first_crate()
        with tempfile.TemporaryDirectory() as tmp:
            inc = Path(tmp) / "aegis-crates.inc"
            inc.write_text(INC.replace(f'"{checksum}"', '"' + "f" * 64 + '"', 1))
            run = subprocess.run(
                [sys.executable, TOOL, "--check", "--inc", inc], capture_output=True, text=True, check=False
            )
            self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
            self.assertIn(f"{name}-{version}: checksum {'f' * 64} here, {checksum} in Cargo.lock", run.stderr)
            ok = subprocess.run(
                [sys.executable, TOOL, "--check"], capture_output=True, text=True, check=False
            )
            self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)


if __name__ == "__main__":
    unittest.main()
