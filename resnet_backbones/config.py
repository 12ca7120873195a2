"""Config keys that resnet_backbones adds to detectron2's ``MODEL.RESNETS``."""

from __future__ import annotations

from detectron2.config import CfgNode

__all__ = ["OPTIMIZERS", "add_resnet_backbones_config"]

OPTIMIZERS = ("SGD", "AdamW")

_RESNETS_KEYS = {
    # Shortcut option of the ResNet paper (Sec. 3.3): "A" identity with zero-padded extra
    # channels, "B" projection only where the shape changes, "C" projection on every block.
    "SHORTCUT": "B",
    # Stem: "basic" 7x7/2 conv + max-pool; "deep" three 3x3 convs + max-pool (ResNet-C).
    "STEM": "basic",
    # Projection shortcuts average-pool before a stride-1 1x1 conv (ResNet-D).
    "AVG_DOWN": False,
    # Start the last norm of every residual branch at zero scale (Goyal et al., 2017).
    "ZERO_INIT_RESIDUAL": False,
}


def add_resnet_backbones_config(cfg: CfgNode) -> CfgNode:
    """Adds the keys of resnet_backbones to ``cfg`` in place and returns it.

    Keys already present keep their values, so calling it twice changes nothing. Every
    detectron2 ``MODEL.RESNETS`` key keeps its meaning; with the added keys at their defaults
    the network is exactly detectron2's ResNet.
    """
    for key, default in _RESNETS_KEYS.items():
        if key not in cfg.MODEL.RESNETS:
            setattr(cfg.MODEL.RESNETS, key, default)
    if "OPTIMIZER" not in cfg.SOLVER:
        # "SGD" (detectron2's, with SOLVER.MOMENTUM) or "AdamW"; read by resnet_backbones'
        # Trainer. The CPU quickstart trains from scratch, where AdamW converges faster.
        cfg.SOLVER.OPTIMIZER = "SGD"
    return cfg
