"""ResNet-family backbones for detectron2.

``import resnet_backbones`` registers, and does nothing else:

* the stand-in for ``detectron2._C`` where detectron2 was built without its compiled ops (see
  :mod:`._compat`), before anything imports ``detectron2.layers``;
* in detectron2's registries, as soon as ``detectron2.modeling`` is imported (at once if it
  already is; see :mod:`._import_hooks`): the backbones ``build_resnet_family_backbone``,
  ``build_resnet_family_fpn_backbone``, ``build_resnet_family_retinanet_fpn_backbone``,
  ``build_rexnet_backbone``, ``build_rexnet_fpn_backbone`` and the C4 head
  ``Res5FamilyROIHeads``;
* the model-zoo scheme ``resnet_backbones://NAME`` in detectron2's PathManager;
* ``SOLVER.OPTIMIZER`` in detectron2's ``build_optimizer``, which ``DefaultTrainer`` calls, as
  soon as ``detectron2.solver`` or ``detectron2.engine`` is imported (see :mod:`.solver`);
* models on the CPU in detectron2's ``create_ddp_model``, which ``DefaultTrainer`` calls, as soon
  as ``detectron2.engine`` is imported (see :mod:`.launch`).

It does not import ``detectron2.data``, register datasets, choose a matplotlib backend or seed
a random generator. The built-in datasets ``shapes_train`` and ``shapes_val`` are registered by
:func:`resnet_backbones.data.register_datasets` (the tools and the Trainer call it).

Call :func:`add_resnet_backbones_config` on a config before merging one of our YAML files. The
names below are imported on first use.
"""

import importlib

from ._compat import install_c_stand_in, install_pillow_aliases, uses_c_stand_in
from ._import_hooks import when_imported

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "resnet_backbones needs detectron2 (v0.6 or later), which is not installed in this "
        f"environment ({e}). Install it from source (see detectron2's INSTALL.md), or run "
        "`make quickstart` in a checkout of resnet_backbones to get a pinned .venv."
    ) from e

# Must run before anything imports detectron2.layers and detectron2.data (see _compat.py).
install_c_stand_in()
install_pillow_aliases()

from .weights.resolve import register_zoo_scheme  # noqa: E402

register_zoo_scheme()
# Importing our models registers them; detectron2's registries live in detectron2.modeling.
when_imported("detectron2.modeling", lambda: importlib.import_module("resnet_backbones.modeling"))


# detectron2's DefaultTrainer builds its optimizer with the build_optimizer that
# detectron2.engine.defaults bound at import: make it ours, which honours SOLVER.OPTIMIZER.
def _honour_solver_optimizer() -> None:
    importlib.import_module("resnet_backbones.solver").install()


when_imported("detectron2.solver.build", _honour_solver_optimizer)
when_imported("detectron2.engine.defaults", _honour_solver_optimizer)


# detectron2's create_ddp_model passes device_ids, which DistributedDataParallel refuses for a
# model on the CPU: make it ours, which does not (and makes SyncBN run on gloo).
def _wrap_cpu_models_in_ddp() -> None:
    importlib.import_module("resnet_backbones.launch").install()


when_imported("detectron2.engine.defaults", _wrap_cpu_models_in_ddp)

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_LAZY = {
    "add_resnet_backbones_config": ".config",
    "FamilyCheckpointer": ".weights.checkpoint",
    "Res5FamilyROIHeads": ".modeling",
    "ResNetFamily": ".modeling",
    "ReXNet": ".modeling",
    "build_resnet_family_backbone": ".modeling",
    "build_resnet_family_fpn_backbone": ".modeling",
    "build_resnet_family_retinanet_fpn_backbone": ".modeling",
    "build_rexnet_backbone": ".modeling",
    "build_rexnet_fpn_backbone": ".modeling",
    "create_backbone": ".api",
    "create_detector": ".api",
    "list_presets": ".api",
    "list_weights": ".api",
    "optimize_for_inference": ".inference",
}

# Subpackages and modules, also reachable as attributes (``resnet_backbones.data``).
_SUBMODULES = (
    "api", "cli", "cli_errors", "complexity", "config", "data", "engine", "inference", "launch",
    "model_zoo", "modeling", "presets", "solver", "train_net", "utils", "visualize", "weights",
)  # fmt: skip

__all__ = [*_LAZY, *_SUBMODULES, "install_c_stand_in", "uses_c_stand_in"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
