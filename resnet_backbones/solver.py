"""The optimizer of a config: detectron2's, or the one ``SOLVER.OPTIMIZER`` names.

detectron2 builds every optimizer of a yacs config with ``detectron2.solver.build_optimizer``,
which is always SGD, and knows nothing of our key ``SOLVER.OPTIMIZER``: a detectron2
``DefaultTrainer`` would train a config that says "AdamW" with SGD, silently.
``import resnet_backbones`` therefore makes that name :func:`build_optimizer` (see
:func:`install`), in ``detectron2.solver`` and ``detectron2.solver.build``, and in
``detectron2.engine.defaults``, which binds it by name when it is imported and whose
``DefaultTrainer.build_optimizer`` calls it. A config without the key, or with "SGD", gets
detectron2's own optimizer, unchanged.

A trainer that overrides ``build_optimizer`` itself is out of reach: it should call
:func:`build_optimizer` to honour the key.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .utils import check_choice

if TYPE_CHECKING:
    import torch
    from detectron2.config import CfgNode

__all__ = ["OPTIMIZERS", "build_optimizer", "install"]

# The values of SOLVER.OPTIMIZER.
OPTIMIZERS = ("SGD", "AdamW")

# detectron2's own build_optimizer (SGD), kept by install() on detectron2.solver.build under this
# name before it replaces the names: there it outlives an importlib.reload of this module. This
# module imports no detectron2 at import time: install() runs while detectron2.solver is being
# imported.
_ORIGINAL = "_detectron2_build_optimizer"


def _detectron2_sgd(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    from detectron2.solver import build

    return getattr(build, _ORIGINAL)(cfg, model)


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's SGD, or AdamW where ``SOLVER.OPTIMIZER`` says so, with the same parameter
    groups, weight-decay rules and gradient clipping (``SOLVER.CLIP_GRADIENTS``).

    Args:
        cfg: a detectron2 config; without ``SOLVER.OPTIMIZER`` (no
            :func:`~resnet_backbones.add_resnet_backbones_config`), SGD.
        model: the model whose parameters it optimises.

    Raises:
        ValueError: ``SOLVER.OPTIMIZER`` is not one of :data:`OPTIMIZERS`.
    """
    import torch
    from detectron2.solver import build

    name = cfg.SOLVER.get("OPTIMIZER", "SGD")
    check_choice("SOLVER.OPTIMIZER", name, OPTIMIZERS)
    install()
    if name == "SGD":
        return _detectron2_sgd(cfg, model)
    params = build.get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    return build.maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )


def install() -> None:
    """Makes detectron2's ``build_optimizer`` names :func:`build_optimizer` in every module of
    detectron2 that is imported and holds one (``import resnet_backbones`` calls this when
    ``detectron2.solver.build`` and ``detectron2.engine.defaults`` are imported)."""
    build = sys.modules.get("detectron2.solver.build")
    if build is not None and not hasattr(build, _ORIGINAL):
        setattr(build, _ORIGINAL, build.build_optimizer)
    for name in ("detectron2.solver.build", "detectron2.solver", "detectron2.engine.defaults"):
        module = sys.modules.get(name)
        original = getattr(module, "build_optimizer", None)
        # Ours already. A copy from before an importlib.reload of this module is replaced by the
        # new one (detectron2's own was kept as _ORIGINAL the first time).
        if original is None or original is build_optimizer:
            continue
        module.build_optimizer = build_optimizer
