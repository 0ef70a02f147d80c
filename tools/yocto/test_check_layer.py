"""Tests of tools/yocto/check_layer.py (run by tools/yocto-check.sh): the layer as committed
passes, and a copy with one thing broken is reported with what is wrong."""

import shutil
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_layer as cl  # noqa: E402

# What the checks read from the checkout, copied next to a copy of the layer.
CHECKOUT_FILES = ["Cargo.toml", "tools/fetch-models.sh", "tools/models/selfie_tflite2onnx.py"]


class LayerCheck(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp)
        shutil.copytree(cl.ROOT / "yocto/meta-aegis", self.tmp / "yocto/meta-aegis")
        for rel in CHECKOUT_FILES:
            (self.tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(cl.ROOT / rel, self.tmp / rel)

    def problems(self) -> list[str]:
        layer = cl.Layer(self.tmp / "yocto/meta-aegis")
        agent, _pending = cl.check_agent(layer, self.tmp)
        return cl.check_layer_conf(layer) + cl.check_src_uri(layer) + cl.check_models(layer, self.tmp) + agent

    def edit(self, rel: str, old: str, new: str) -> None:
        path = self.tmp / rel
        text = path.read_text()
        self.assertIn(old, text, f"{rel} no longer has {old!r}: update this test")
        path.write_text(text.replace(old, new, 1))

    def test_the_committed_layer_passes(self):
        self.assertEqual(self.problems(), [])

    def test_the_deploy_files_the_agent_installs_are_listed_while_missing(self):
        _, pending = cl.check_agent(cl.Layer(self.tmp / "yocto/meta-aegis"), self.tmp)
        self.assertIn("deploy/systemd/aegis.service", pending)
        self.assertIn("deploy/aegis.yaml", pending)

    def test_a_model_pin_that_differs_from_fetch_models_is_reported(self):
        sha = "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
        self.edit("tools/fetch-models.sh", sha, "0" * 64)
        self.assertEqual(
            self.problems(),
            [
                f"aegis-models_1.0.bb: AEGIS_NUDENET_SHA256 {sha}, tools/fetch-models.sh pins {'0' * 64} for nudenet-320n.onnx"
            ],
        )

    def test_a_converter_package_bump_in_fetch_models_only_is_reported(self):
        self.edit("tools/fetch-models.sh", "numpy==2.4.6", "numpy==2.4.7")
        self.assertEqual(
            self.problems(), ["aegis-models_1.0.bb: numpy 2.4.6, tools/fetch-models.sh pins 2.4.7"]
        )

    def test_a_missing_local_file_is_reported(self):
        (self.tmp / "yocto/meta-aegis/recipes-aegis/aegis-system/files/etc-aegis.mount").unlink()
        found = self.problems()
        self.assertEqual(len(found), 1)
        self.assertIn(
            "recipes-aegis/aegis-system/aegis-system_1.0.bb: file://etc-aegis.mount is in none of", found[0]
        )

    def test_a_remote_entry_without_checksum_is_reported(self):
        self.edit(
            "yocto/meta-aegis/recipes-aegis/aegis-models/aegis-models_1.0.bb",
            'SRC_URI[numpy.sha256sum] = "90f9849678c75fe7afa2d348ac842c168b0a4d3d61919687216dfc547976d853"\n',
            "",
        )
        self.assertEqual(
            self.problems(),
            [
                "recipes-aegis/aegis-models/aegis-models_1.0.bb: no SHA-256 for the SRC_URI entry named numpy (SRC_URI[numpy.sha256sum])"
            ],
        )

    def test_a_recipe_bitbake_would_not_see_is_reported(self):
        src = self.tmp / "yocto/meta-aegis/recipes-aegis/aegis-system"
        src.rename(self.tmp / "yocto/meta-aegis/recipes-aegis-system")
        found = self.problems()
        self.assertIn(
            "recipes-aegis-system/aegis-system_1.0.bb: not matched by BBFILES/BBFILES_DYNAMIC (BitBake ignores it)",
            found,
        )

    def test_an_agent_recipe_behind_the_workspace_version_is_reported(self):
        self.edit("Cargo.toml", 'version = "0.1.0"', 'version = "0.2.0"')
        found = self.problems()
        self.assertIn(
            "aegis_0.1.0.bb: version 0.1.0, but Cargo.toml's workspace version is 0.2.0 (rename the recipe)",
            found,
        )


if __name__ == "__main__":
    unittest.main()
