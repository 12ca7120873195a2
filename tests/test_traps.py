"""The traps for an existing detectron2 project: ``SOLVER.OPTIMIZER`` under detectron2's own
DefaultTrainer, a config that ``add_resnet_backbones_config`` never saw, and detectron2 imported
before resnet_backbones where it has no compiled ops."""

import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from resnet_backbones import solver
from resnet_backbones._compat import SHIM_MARKER, install_c_shim
from resnet_backbones.config import MissingConfigKeysError

from .helpers import REPO, tiny_cfg, tiny_shapes


# --------------------------------------------------------------------------------------------
# SOLVER.OPTIMIZER
# --------------------------------------------------------------------------------------------
def test_detectron2s_sgd_survives_a_reload_of_the_solver_module():
    import importlib

    import detectron2.solver

    model = torch.nn.Linear(2, 2)
    before = detectron2.solver.build_optimizer(get_cfg(), model)
    importlib.reload(solver)
    solver.install()  # points detectron2's names at the reloaded module's function
    assert detectron2.solver.build_optimizer is solver.build_optimizer
    for build in (solver.build_optimizer, detectron2.solver.build_optimizer):
        after = build(get_cfg(), model)
        assert type(after) is type(before) and type(after).__name__ == "SGD"
        assert after.defaults == before.defaults


def test_detectron2_default_trainer_honours_solver_optimizer(tmp_path):
    cfg = tiny_cfg(tmp_path, *tiny_shapes())
    assert cfg.SOLVER.OPTIMIZER == "AdamW"  # the quickstart's
    trainer = DefaultTrainer(cfg)  # detectron2's own, not resnet_backbones.engine.Trainer
    adamw = trainer.optimizer
    assert isinstance(adamw, torch.optim.AdamW)  # with gradient clipping, as configured
    assert type(adamw).__name__ == "AdamWWithGradientClip"
    assert adamw.defaults["lr"] == cfg.SOLVER.BASE_LR
    assert adamw.defaults["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY
    # detectron2's parameter groups: norm parameters get SOLVER.WEIGHT_DECAY_NORM.
    assert {g["weight_decay"] for g in adamw.param_groups} == {
        cfg.SOLVER.WEIGHT_DECAY,
        cfg.SOLVER.WEIGHT_DECAY_NORM,
    }

    cfg.SOLVER.OPTIMIZER = "SGD"
    sgd = DefaultTrainer.build_optimizer(cfg, trainer.model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == cfg.SOLVER.MOMENTUM
    # A config without our keys gets detectron2's SGD, as before.
    plain = get_cfg()
    assert "OPTIMIZER" not in plain.SOLVER
    assert type(DefaultTrainer.build_optimizer(plain, trainer.model)) is torch.optim.SGD

    cfg.SOLVER.OPTIMIZER = "Adam"
    with pytest.raises(
        ValueError, match="SOLVER.OPTIMIZER = 'Adam' is not valid; valid values: 'SGD', 'AdamW'"
    ):
        DefaultTrainer.build_optimizer(cfg, trainer.model)


def test_every_name_of_detectron2s_build_optimizer_is_ours():
    import detectron2.solver
    import detectron2.solver.build
    from detectron2.engine import defaults

    for module in (detectron2.solver, detectron2.solver.build, defaults):
        assert module.build_optimizer is solver.build_optimizer, module.__name__


# --------------------------------------------------------------------------------------------
# A config without our keys
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "builder", ["build_resnet_family_fpn_backbone", "build_rexnet_backbone"]
)  # fmt: skip
def test_a_config_without_our_keys_names_add_resnet_backbones_config(builder):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = builder
    with pytest.raises(MissingConfigKeysError) as e:
        BACKBONE_REGISTRY.get(builder)(cfg, ShapeSpec(channels=3))
    message = str(e.value)
    assert "call resnet_backbones.add_resnet_backbones_config(cfg)" in message
    assert "MODEL.RESNETS.STEM" in message and "MODEL.REXNET.WIDTH_MULT" in message
    assert isinstance(e.value, AttributeError)  # what a missing config key always was


# --------------------------------------------------------------------------------------------
# detectron2 imported first, without its compiled ops
# --------------------------------------------------------------------------------------------
def test_install_c_shim_is_idempotent_and_leaves_other_c_modules_alone(tmp_path):
    target = tmp_path / "_C.py"
    assert install_c_shim(str(tmp_path)) == str(target)
    assert SHIM_MARKER in target.read_text()
    assert install_c_shim(str(tmp_path)) is None  # already there
    target.write_text(f"{SHIM_MARKER} = True  # an older shim\n")
    assert install_c_shim(str(tmp_path)) == str(target)
    target.write_text("# someone else's _C\n")
    assert install_c_shim(str(tmp_path)) is None
    assert target.read_text() == "# someone else's _C\n"
    compiled = tmp_path / "compiled"
    compiled.mkdir()
    (compiled / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert install_c_shim(str(compiled)) is None
    assert not (compiled / "_C.py").exists()


def test_detectron2_imports_before_resnet_backbones_with_the_shim(tmp_path):
    shim_dir = tmp_path / "detectron2"
    shim_dir.mkdir()
    install_c_shim(str(shim_dir))
    code = (
        "import detectron2\n"
        # As if tools/install_env.sh had put the shim into the installed detectron2 (first: the
        # .venv's detectron2 has one of its own already).
        f"detectron2.__path__.insert(0, {str(shim_dir)!r})\n"
        "import detectron2.modeling\n"
        f"assert detectron2._C.__file__ == {str(shim_dir / '_C.py')!r}, detectron2._C.__file__\n"
        "from detectron2.engine import DefaultTrainer, defaults\n"
        "from detectron2.layers import deform_conv\n"
        "import resnet_backbones\n"
        "from resnet_backbones._compat import CompiledOpUnavailable\n"
        "assert resnet_backbones.uses_c_stand_in()\n"
        "assert 'build_resnet_family_backbone' in detectron2.modeling.BACKBONE_REGISTRY\n"
        "assert defaults.build_optimizer is resnet_backbones.solver.build_optimizer\n"
        "try:\n"
        "    deform_conv._C.deform_conv_forward(1)\n"  # bound to the shim before the import
        "except CompiledOpUnavailable as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("detectron2 op 'deform_conv_forward' needs detectron2's compiled")
