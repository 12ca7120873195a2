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

import logging
import sys
from typing import TYPE_CHECKING, Any, Optional

import torch

from .utils import check_choice

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = [
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "WarmupPlateauLR",
    "build_lr_scheduler",
    "build_optimizer",
    "install",
]

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


# The values of SOLVER.LR_SCHEDULER_NAME: detectron2's, and the plateau schedule of the ResNet
# paper's ImageNet recipe.
LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupPlateauLR")


class WarmupPlateauLR(torch.optim.lr_scheduler._LRScheduler):
    """The learning rate "divided by 10 when the error plateaus" (ResNet paper, Sec. 3.4):
    ``base_lr * warmup(iteration) * gamma ** reductions``, where :meth:`report` counts a
    reduction each time the validation error has not improved on its best by more than
    ``threshold`` for ``patience`` evaluations in a row (then the count of bad evaluations
    restarts, as in torch's ``ReduceLROnPlateau``).

    Unlike ``ReduceLROnPlateau`` it steps every iteration, as detectron2's ``LRScheduler`` hook
    steps every scheduler, so the warm-up of ``SOLVER.WARMUP_*`` applies; and its state (best
    error, bad evaluations, reductions) is in its ``state_dict``, which detectron2's checkpoints
    hold: a resumed run reduces where the uninterrupted one does.

    Args:
        optimizer: its parameter groups' ``initial_lr`` are the base rates.
        gamma: the factor of a reduction (``SOLVER.GAMMA``, 0.1).
        patience: evaluations without improvement before a reduction.
        threshold: the improvement, in error points (percent), that counts.
        max_iter, warmup_factor, warmup_iters, warmup_method: detectron2's warm-up
            (``SOLVER.MAX_ITER``, ``SOLVER.WARMUP_*``; "linear" or "constant").
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        gamma: float,
        patience: int,
        threshold: float,
        max_iter: int,
        warmup_factor: float = 1.0,
        warmup_iters: int = 0,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        if patience < 1:
            raise ValueError(f"patience = {patience!r} is not valid; it must be >= 1")
        check_choice("warmup_method", warmup_method, ("linear", "constant"))
        self.gamma, self.patience, self.threshold = gamma, patience, threshold
        # As detectron2's schedulers: the warm-up is at most the whole run.
        self.warmup = (warmup_factor, min(warmup_iters, max_iter), warmup_method)
        self.best: Optional[float] = None
        self.bad_evaluations = 0
        self.reductions = 0
        super().__init__(optimizer, last_epoch)

    def _warmup_multiplier(self) -> float:
        factor, iters, method = self.warmup
        if self.last_epoch >= iters:
            return 1.0
        if method == "constant":
            return factor
        alpha = self.last_epoch / iters
        return factor * (1 - alpha) + alpha  # linear, as detectron2's WarmupParamScheduler

    # The state a resume restores; the settings come from the config of the resumed run.
    _STATE = ("last_epoch", "base_lrs", "_last_lr", "best", "bad_evaluations", "reductions")

    def state_dict(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in self._STATE if k in self.__dict__}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k in self._STATE})

    def get_lr(self) -> list[float]:
        multiplier = self._warmup_multiplier() * self.gamma**self.reductions
        return [base * multiplier for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def report(self, error: float, iteration: Optional[int] = None) -> bool:
        """Counts a validation ``error`` (percent); returns whether the rate was reduced (it
        then applies from the next iteration on)."""
        if self.best is None or error < self.best - self.threshold:
            self.best, self.bad_evaluations = error, 0
            return False
        self.bad_evaluations += 1
        if self.bad_evaluations < self.patience:
            return False
        self.bad_evaluations = 0
        self.reductions += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        logger.info(
            "Validation error %.2f%% has not improved on %.2f%% by more than %.2f points in %d "
            "evaluations%s: learning rate reduced %d time(s), now %g",
            error,
            self.best,
            self.threshold,
            self.patience,
            "" if iteration is None else f" (iteration {iteration})",
            self.reductions,
            self._last_lr[0],
        )
        return True


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
    """detectron2's LR scheduler of ``SOLVER.LR_SCHEDULER_NAME``, or :class:`WarmupPlateauLR`
    for ``"WarmupPlateauLR"`` (``SOLVER.GAMMA``, ``SOLVER.PLATEAU_PATIENCE``,
    ``SOLVER.PLATEAU_THRESHOLD``, the warm-up keys).

    Raises:
        ConfigError: an unknown ``SOLVER.LR_SCHEDULER_NAME``, naming the valid ones.
    """
    from detectron2.solver import build_lr_scheduler as detectron2_build

    from .config import ConfigError

    name = cfg.SOLVER.LR_SCHEDULER_NAME
    try:
        check_choice("SOLVER.LR_SCHEDULER_NAME", name, LR_SCHEDULERS)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if name != "WarmupPlateauLR":
        return detectron2_build(cfg, optimizer)
    return WarmupPlateauLR(
        optimizer,
        gamma=cfg.SOLVER.GAMMA,
        patience=cfg.SOLVER.PLATEAU_PATIENCE,
        threshold=cfg.SOLVER.PLATEAU_THRESHOLD,
        max_iter=cfg.SOLVER.MAX_ITER,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        warmup_iters=cfg.SOLVER.WARMUP_ITERS,
        warmup_method=cfg.SOLVER.WARMUP_METHOD,
    )
