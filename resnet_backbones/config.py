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
    # Order of norm, ReLU and addition in a block (identity-mapping paper, Fig. 4): "post" (a,
    # the original v1 block), "bn_after_add" (b), "relu_before_add" (c), "relu_preact" (d) or
    # "preact" (e, full pre-activation: ResNet v2, ending with a final BN+ReLU).
    "BLOCK_ORDER": "post",
    # Res2Net (Gao et al., 2019): RES2NET_SCALE s > 1 splits a bottleneck's 3x3 conv into s
    # groups of RES2NET_WIDTH w channels at res2 (doubling per stage); 1 means a plain bottleneck.
    "RES2NET_SCALE": 1,
    "RES2NET_WIDTH": 26,
    # Squeeze-and-excitation on every block with reduction ratio r (the SE paper's r = 16);
    # 0 means off.
    "SE_RATIO": 0,
    # Dropout probability between the convs of a block (Wide ResNet uses 0.3); 0 means off.
    "DROPOUT": 0.0,
    # Width multiplier of the CIFAR networks (STEM "cifar"): stages 16k/32k/64k (WRN-d-k).
    "WIDEN_FACTOR": 1,
}

# ReXNet (Han et al., 2021), built by build_rexnet_backbone / build_rexnet_fpn_backbone.
_REXNET_KEYS = {
    # Channel width multiplier: 1.0 is rexnet_100, 1.5 rexnet_150 ...
    "WIDTH_MULT": 1.0,
    # Which features to return: "stem" and "res2".."res5" (strides 2, 4, 8, 16, 32).
    "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    # Norm after every conv, a name understood by detectron2.layers.get_norm.
    "NORM": "BN",
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
    if "REXNET" not in cfg.MODEL:
        cfg.MODEL.REXNET = CfgNode()
    for key, default in _REXNET_KEYS.items():
        if key not in cfg.MODEL.REXNET:
            setattr(cfg.MODEL.REXNET, key, default)
    if "OPTIMIZER" not in cfg.SOLVER:
        # "SGD" (detectron2's, with SOLVER.MOMENTUM) or "AdamW"; read by resnet_backbones'
        # Trainer. The CPU quickstart trains from scratch, where AdamW converges faster.
        cfg.SOLVER.OPTIMIZER = "SGD"
    return cfg
