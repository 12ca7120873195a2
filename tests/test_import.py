"""``import resnet_backbones`` registers and does nothing else."""

import subprocess
import sys

from .helpers import REPO


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_import_has_no_side_effects_beyond_registration():
    out = _run(
        "import sys, torch\n"
        "state = torch.random.get_rng_state()\n"
        "import resnet_backbones\n"
        "assert torch.equal(torch.random.get_rng_state(), state), 'a generator was seeded'\n"
        "heavy = ['detectron2.data', 'detectron2.modeling', 'matplotlib', 'resnet_backbones.data']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from detectron2.utils.file_io import PathManager\n"
        "print('resnet_backbones://' in PathManager._path_handlers)\n"
    )
    assert out.splitlines() == ["[]", "True"]


def test_the_registries_are_filled_when_detectron2_modeling_is_imported():
    out = _run(
        "import resnet_backbones\n"
        "from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY\n"
        "from detectron2.data import DatasetCatalog\n"
        "names = ['build_resnet_family_backbone', 'build_resnet_family_fpn_backbone',\n"
        "         'build_resnet_family_retinanet_fpn_backbone', 'build_rexnet_backbone',\n"
        "         'build_rexnet_fpn_backbone']\n"
        "print(all(n in BACKBONE_REGISTRY for n in names), 'Res5FamilyROIHeads' in ROI_HEADS_REGISTRY)\n"
        "print('shapes_val' in DatasetCatalog.list())\n"
        "from resnet_backbones.data import register_datasets\n"
        "register_datasets()\n"
        "register_datasets()\n"
        "print('shapes_val' in DatasetCatalog.list())\n"
    )
    assert out.splitlines() == ["True True", "False", "True"]


def test_detectron2_modeling_imported_first_is_registered_at_once():
    out = _run(
        "import sys, types, detectron2\n"
        # A stand-in of our own for the compiled ops, so that detectron2.modeling imports first.
        "sys.modules['detectron2._C'] = types.ModuleType('detectron2._C')\n"
        "import detectron2.modeling as m\n"
        "assert 'build_rexnet_backbone' not in m.BACKBONE_REGISTRY\n"
        "import resnet_backbones\n"
        "assert 'build_rexnet_backbone' in m.BACKBONE_REGISTRY\n"
        "print(resnet_backbones.ResNetFamily.__name__)\n"
    )
    assert out == "ResNetFamily"


def test_public_names_are_imported_on_first_use():
    import resnet_backbones

    assert resnet_backbones.add_resnet_backbones_config.__name__ == "add_resnet_backbones_config"
    assert set(resnet_backbones.__all__) <= set(dir(resnet_backbones))
    try:
        resnet_backbones.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no attribute 'no_such_name'" in str(e)
    else:
        raise AssertionError("an unknown name must be an AttributeError")


def test_any_module_of_the_package_may_be_imported_first():
    for first in ("resnet_backbones.config", "resnet_backbones.presets",
                  "resnet_backbones.weights.catalog", "resnet_backbones.modeling"):  # fmt: skip
        out = _run(
            f"import {first}\n"
            "from resnet_backbones.presets import preset_config\n"
            "from detectron2.modeling import build_backbone\n"
            "cfg = preset_config('R-18', 'C4')\n"
            "cfg.MODEL.DEVICE = 'cpu'\n"
            "print(type(build_backbone(cfg)).__name__)\n"
        )
        assert out == "ResNetFamily", first
